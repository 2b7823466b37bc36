// The console's only script (the Content-Security-Policy allows no other): follows the
// gateway's live feed (server-sent events) and fetches the page's live part again when an
// event concerns it. The fragment is HTML the server escaped; nothing from the feed is
// inserted as HTML.
"use strict";

(function () {
  var live = document.body.getAttribute("data-live");
  var status = document.getElementById("feed-state");
  if (!live || !window.EventSource) {
    if (status) status.textContent = "live: off";
    return;
  }
  var region = document.getElementById("live");
  var jobPage = /^\/jobs\/[^/?]+$/.test(live) ? live.slice("/jobs/".length) : null;
  var pending = null;
  var inFlight = false;
  var again = false;

  function refresh() {
    pending = null;
    if (inFlight) { again = true; return; }
    inFlight = true;
    var url = live + (live.indexOf("?") < 0 ? "?" : "&") + "fragment=1";
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (text) {
        if (region) region.innerHTML = text;
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () {
        inFlight = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() {
    if (pending === null) pending = setTimeout(refresh, 150);
  }

  var source = new EventSource("/events");
  source.onopen = function () {
    if (status) status.textContent = "live: connected";
    document.body.setAttribute("data-feed", "open");
    schedule(); // what happened while it was not connected
  };
  source.onerror = function () {
    if (status) status.textContent = "live: reconnecting";
    document.body.setAttribute("data-feed", "closed");
  };
  source.onmessage = function (message) {
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    if (jobPage !== null && event.job_id !== jobPage) return;
    schedule();
  };
})();
