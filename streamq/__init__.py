"""streamq: durable, high-throughput event-batch processing on Redis Streams."""

from .app import App
from .batch import Batch, Message
from .deadletter import DeadLetter, DeadLetterPage, DeadLetterResult, DeadLetters, SyncDeadLetters
from .errors import (
    BacklogFull,
    ConfigurationError,
    Defer,
    EventTooLarge,
    Reject,
    ReplicationTimeout,
    Retry,
    StreamqError,
)
from .events import Event
from .producer import Producer, PublishResult, SyncProducer
from .settings import ConsumerSettings

__all__ = [
    "App",
    "BacklogFull",
    "Batch",
    "ConfigurationError",
    "ConsumerSettings",
    "DeadLetter",
    "DeadLetterPage",
    "DeadLetterResult",
    "DeadLetters",
    "Defer",
    "Event",
    "EventTooLarge",
    "Message",
    "Producer",
    "PublishResult",
    "Reject",
    "ReplicationTimeout",
    "Retry",
    "StreamqError",
    "SyncDeadLetters",
    "SyncProducer",
]

__version__ = "0.1.0"
