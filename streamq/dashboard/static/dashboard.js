// streamq dashboard: refresh live pages in place, and ask before destructive posts. No framework.
// A page whose <body> has data-refresh-ms fetches itself that often (while the tab is visible) and swaps
// its <main>, so the server renders everything and nothing is built here.
(function () {
  "use strict";
  var body = document.body;
  var every = parseInt(body.getAttribute("data-refresh-ms") || "0", 10);
  if (every > 0) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(window.location.pathname + window.location.search,
            { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (text) {
          if (text === null) { return; }
          var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
          var live = document.getElementById("live");
          if (fresh && live) { live.replaceWith(fresh); }
        })
        .catch(function () { /* the next tick tries again */ })
        .finally(function () { busy = false; });
    }, Math.max(every, 1000));
  }
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var submitter = event.submitter;
    var question = (submitter && submitter.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
})();
