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
    // From the event the page was rendered at: nothing in between is missed.
    var after = Math.min.apply(null, Array.prototype.map.call(targets, function (el) {
      return parseInt(el.getAttribute("data-after") || "0", 10);
    }));
    var source = new EventSource("/events?after=" + after + "&types=" + types.join(","));
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

  function csrf() {
    var meta = document.querySelector("meta[name=csrf-token]");
    return meta ? meta.getAttribute("content") : "";
  }

  // Live extraction: as a line is typed, ask what the plugins make of it and show
  // it beside the line (server-rendered, escaped HTML of our own node).
  function extraction() {
    var form = document.getElementById("compose");
    if (!form) { return; }
    var timers = new WeakMap();
    function ask(area) {
      var cell = area.closest("tr").querySelector(".extract");
      var data = new FormData();
      data.append("text", area.value);
      data.append("kind", form.querySelector("[name=kind]").value);
      fetch("/compose/extract", { method: "POST", body: data, credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf() } })
        .then(function (r) { return r.ok ? r.text() : ""; })
        .then(function (html) { cell.innerHTML = html; })
        .catch(function () { cell.textContent = ""; });
    }
    form.addEventListener("input", function (event) {
      var area = event.target;
      if (!area.matches("textarea[data-extract]")) { return; }
      clearTimeout(timers.get(area));
      timers.set(area, setTimeout(function () { ask(area); }, 300));
    });
    form.querySelectorAll("textarea[data-extract]").forEach(function (area) {
      if (area.value.trim()) { ask(area); }
    });
    var kind = form.querySelector("[name=kind]");
    var response = document.getElementById("response-field");
    if (kind && response) {
      kind.addEventListener("change", function () { response.hidden = kind.value !== "order_response"; });
    }
  }

  // "Print": the print stylesheet makes the page a clean A4 form.
  function printing() {
    document.addEventListener("click", function (event) {
      var link = event.target.closest("[data-print]");
      if (!link) { return; }
      event.preventDefault();
      window.print();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    live(); lines(); errors(); extraction(); printing();
  });
})();
