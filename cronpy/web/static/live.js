// Progressive enhancement: the pages work without this file. With it, the element marked
// data-live="N" is refreshed from the server every N seconds (short polling: the same URL, the
// same server-rendered HTML, so the escaping is the server's), and elapsed times tick every second.
"use strict";
(function () {
  function fmt(seconds) {
    var s = Math.max(0, seconds);
    if (s < 60) return s.toFixed(0) + "s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    var h = Math.floor(m / 60);
    if (h < 24) return h + "h" + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d" + (h % 24) + "h";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-since]").forEach(function (el) {
      var t = Date.parse(el.getAttribute("data-since"));
      if (!isNaN(t)) el.textContent = fmt((now - t) / 1000);
    });
  }
  function stamp() {
    var el = document.getElementById("updated");
    if (!el) return;
    var d = new Date();
    el.setAttribute("datetime", d.toISOString());
    var pad = function (n) { return String(n).padStart(2, "0"); };
    el.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    document.body.classList.remove("stale");
  }
  function schedule() {
    var live = document.getElementById("live");
    var every = live ? Number(live.getAttribute("data-live")) : 0;
    if (every > 0) setTimeout(refresh, every * 1000);
  }
  function refresh() {
    var focused = document.activeElement;
    var live = document.getElementById("live");
    // Not while the page is hidden, nor under a control the user is working in (the job
    // page's history filter is inside the live part).
    if (document.hidden || (live && focused && live.contains(focused) &&
        /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(focused.tagName))) { schedule(); return; }
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        var old = document.getElementById("live");
        if (fresh && old) {
          // Keep what the reader opened (<details>) open across the refresh.
          var was = old.querySelectorAll("details");
          fresh.querySelectorAll("details").forEach(function (d, i) {
            if (was[i] && was[i].open) d.open = true;
          });
          old.replaceWith(document.adoptNode(fresh));
          var banners = doc.getElementById("banners"), shown = document.getElementById("banners");
          if (banners && shown) shown.replaceWith(document.adoptNode(banners));
          document.title = doc.title;
        }
        tick();
        stamp();
      })
      .catch(function () { document.body.classList.add("stale"); })
      .finally(schedule);
  }
  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 1000);
    schedule();
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && document.body.classList.contains("stale")) refresh();
  });
})();
