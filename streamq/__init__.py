"""streamq: durable, high-throughput event-batch processing on Redis Streams."""

from .app import App
from .batch import Batch, Message
from .deadletter import DeadLetter, DeadLetters
from .errors import ConfigurationError, Defer, EventTooLarge, Reject, Retry, StreamqError
from .events import Event
from .producer import Producer, SyncProducer
from .settings import ConsumerSettings

__all__ = [
    "App",
    "Batch",
    "ConfigurationError",
    "ConsumerSettings",
    "DeadLetter",
    "DeadLetters",
    "Defer",
    "Event",
    "EventTooLarge",
    "Message",
    "Producer",
    "Reject",
    "Retry",
    "StreamqError",
    "SyncProducer",
]

__version__ = "0.1.0"
