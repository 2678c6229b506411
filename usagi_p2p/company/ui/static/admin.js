// usagi-p2p web UI: the partners, archive, status and settings pages' few behaviours.
// Loaded from those pages only; no inline scripts anywhere (CSP script-src 'self').
(function () {
  "use strict";

  // A copy button: data-copy="ID" copies the text of the element ID.
  function copying() {
    document.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-copy]");
      if (!button) { return; }
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) { return; }
      var status = button.parentElement.querySelector("[data-copy-status]");
      function said() { if (status) { status.textContent = button.getAttribute("data-copied"); } }
      source.focus();
      source.select();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(source.value).then(said, function () {
          document.execCommand("copy"); said();
        });
      } else {
        document.execCommand("copy");
        said();
      }
    });
  }

  // A user's plugins: "every enabled plugin" and a chosen subset exclude each other.
  function subsets() {
    document.addEventListener("change", function (event) {
      var box = event.target;
      if (box.type !== "checkbox") { return; }
      var set = box.closest("fieldset");
      if (!set) { return; }
      if (box.name === "all_plugins" && box.checked) {
        set.querySelectorAll("input[name=plugins]").forEach(function (b) { b.checked = false; });
      } else if (box.name === "plugins" && box.checked) {
        var all = set.querySelector("input[name=all_plugins]");
        if (all) { all.checked = false; }
      }
    });
  }

  // An upload form (data-upload="TYPE"): the chosen file is the request's body, sent
  // with its progress shown; the answer (a fragment) goes into #verify-result.
  function uploads() {
    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (!form.hasAttribute || !form.hasAttribute("data-upload")) { return; }
      var input = form.querySelector("input[type=file]");
      if (!input || !input.files.length || !window.XMLHttpRequest) { return; }
      event.preventDefault();
      var file = input.files[0];
      var box = form.querySelector(".upload-progress");
      var meter = form.querySelector("progress");
      var text = form.querySelector("[data-upload-text]");
      var result = document.getElementById("verify-result");
      var button = form.querySelector("button[type=submit]");
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("action"));
      xhr.setRequestHeader("Content-Type", form.getAttribute("data-upload"));
      xhr.setRequestHeader("X-CSRF-Token", form.querySelector("input[name=csrf_token]").value);
      xhr.setRequestHeader("X-Usagi-Fragment", "1");
      xhr.setRequestHeader("HX-Request", "true");  // an error comes back as its message alone
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          meter.value = Math.round(100 * e.loaded / e.total);
          text.textContent = meter.value + "%";
        }
      });
      xhr.addEventListener("load", function () {
        box.hidden = true;
        button.disabled = false;
        if (xhr.status >= 400) {
          var problem = document.createElement("p");
          problem.className = "problem";
          problem.setAttribute("role", "alert");
          problem.textContent = xhr.responseText || String(xhr.status);
          result.textContent = "";
          result.appendChild(problem);
        } else {
          result.innerHTML = xhr.responseText;  // our own escaped template (archive_report.html)
        }
        result.focus();
      });
      xhr.addEventListener("error", function () {
        box.hidden = true;
        button.disabled = false;
        result.textContent = String(xhr.status || "network error");
      });
      box.hidden = false;
      button.disabled = true;
      meter.value = 0;
      text.textContent = "0%";
      result.textContent = "";
      xhr.send(file);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    copying(); subsets(); uploads();
  });
})();
