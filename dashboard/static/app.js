// registry-sync dashboard: the few things the server cannot do. No inline scripts anywhere
// (the Content-Security-Policy forbids them); htmx and its SSE extension do the live updates.
(function () {
  "use strict";
  function setLive(state, text) {
    var el = document.getElementById("live-status");
    if (el) { el.dataset.live = state; el.textContent = text; }
  }
  document.addEventListener("htmx:sseOpen", function () { setLive("open", "Live: changes appear as they happen."); });
  document.addEventListener("htmx:sseError", function () { setLive("lost", "Live updates interrupted; reconnecting…"); });
  document.addEventListener("htmx:sseMessage", function () {
    var el = document.getElementById("live-status");
    if (el) { el.dataset.updated = String(Date.now()); }
  });
  // "3 h ago" stays true while the page is open: recomputed every minute from datetime.
  var units = [["y", 31536000], ["mo", 2592000], ["d", 86400], ["h", 3600], ["min", 60]];
  function ago(iso) {
    var s = (Date.now() - Date.parse(iso)) / 1000, future = s < 0;
    s = Math.abs(s);
    for (var i = 0; i < units.length; i++) {
      if (s >= units[i][1]) {
        var n = Math.floor(s / units[i][1]) + " " + units[i][0];
        return future ? "in " + n : n + " ago";
      }
    }
    return future ? "in a moment" : "just now";
  }
  setInterval(function () {
    document.querySelectorAll("time[datetime]").forEach(function (t) { t.textContent = ago(t.getAttribute("datetime")); });
  }, 60000);
})();
