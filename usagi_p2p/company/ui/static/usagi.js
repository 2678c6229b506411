// usagi-p2p web UI: what htmx does not do. No inline scripts anywhere (CSP script-src 'self').
(function () {
  "use strict";

  // Live rows: every element with data-live="URL" is refreshed (its content replaced
  // by GET URL) when the node's event stream reports a document event.
  function live() {
    var targets = document.querySelectorAll("[data-live]");
    if (!targets.length || !window.EventSource) { return; }
    var types = ["document.received", "document.sent", "document.delivered",
      "document.rejected", "document.undelivered", "document.requeued"];
    var source = new EventSource("/events?types=" + types.join(","));
    var pending = null;
    function refresh() {
      if (pending) { return; }
      pending = setTimeout(function () {
        pending = null;
        targets.forEach(function (el) {
          window.htmx.ajax("GET", el.getAttribute("data-live"), { target: el, swap: "innerHTML" });
        });
      }, 150);
    }
    types.forEach(function (t) { source.addEventListener(t, refresh); });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // The line table of a compose form: add and remove rows without a round trip.
  function lines() {
    document.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-action]");
      if (!button) { return; }
      var table = document.querySelector("[data-lines]");
      if (!table) { return; }
      var body = table.querySelector("tbody");
      if (button.getAttribute("data-action") === "add-line") {
        event.preventDefault();
        var template = document.getElementById("line-template");
        var row = template.content.firstElementChild.cloneNode(true);
        body.appendChild(row);
        window.htmx.process(row);
        renumber(body);
        var first = row.querySelector("textarea, input");
        if (first) { first.focus(); }
      } else if (button.getAttribute("data-action") === "remove-line") {
        event.preventDefault();
        var tr = button.closest("tr");
        var next = tr.nextElementSibling || tr.previousElementSibling;
        if (body.children.length > 1) { tr.remove(); } else {
          tr.querySelectorAll("input, textarea").forEach(function (i) { i.value = ""; });
        }
        renumber(body);
        var focus = next && next.querySelector("textarea, input");
        if (focus) { focus.focus(); } else { document.querySelector("[data-action=add-line]").focus(); }
      }
    });
  }

  function renumber(body) {
    Array.prototype.forEach.call(body.children, function (tr, i) {
      var n = tr.querySelector("[data-n]");
      if (n) { n.textContent = String(i + 1); }
      tr.querySelectorAll("[data-label]").forEach(function (el) {
        el.setAttribute("aria-label", el.getAttribute("data-label") + " " + (i + 1));
      });
    });
  }

  // A failed htmx request says why in the status region instead of failing silently.
  function errors() {
    document.body.addEventListener("htmx:responseError", function (event) {
      var toast = document.getElementById("toast");
      if (!toast) { return; }
      toast.textContent = event.detail.xhr.responseText || String(event.detail.xhr.status);
      toast.hidden = false;
      setTimeout(function () { toast.hidden = true; }, 8000);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { live(); lines(); errors(); });
})();
