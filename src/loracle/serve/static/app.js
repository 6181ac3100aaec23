// loracle labelling page: answer with buttons or keys 1..9, skip (s), undo (u), run the next round (Enter).
// Every change is one JSON request; the page then moves on by loading the next item's address. Text from the
// server is only ever set with textContent, never parsed as HTML.
"use strict";

(function () {
  const body = document.body;
  const token = body.dataset.token || "";
  const idx = body.dataset.idx === "" ? null : Number(body.dataset.idx);
  const message = document.getElementById("message");
  let busy = false;

  function withToken(path, params) {
    const query = new URLSearchParams(params || {});
    if (token) query.set("token", token);
    const text = query.toString();
    return text ? path + "?" + text : path;
  }

  function go(item) {
    window.location.assign(withToken("/", item === null || item === undefined ? {} : { item: String(item) }));
  }

  function say(text, isError) {
    message.textContent = text;
    message.classList.toggle("error", Boolean(isError));
  }

  async function call(method, path, payload) {
    const headers = { "Accept": "application/json" };
    if (token) headers["X-Loracle-Token"] = token;
    const options = { method: method, headers: headers };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(payload || {});
    }
    const response = await fetch(path, options);
    let data = {};
    try { data = await response.json(); } catch (err) { data = { error: "the server sent no JSON" }; }
    return { status: response.status, data: data };
  }

  async function answer(label) {
    if (busy || idx === null) return;
    busy = true;
    try {
      const { status, data } = await call("POST", "/api/answer", { idx: idx, label: label });
      if (status === 200) {
        go(data.next);
      } else if (status === 409) {
        say(data.error + "; moving on to the next item…", true);
        setTimeout(function () { go(data.next); }, 1200);
      } else {
        say(data.error || ("error " + status), true);
        busy = false;
      }
    } catch (err) {
      say("the server did not answer (" + err + "); nothing was recorded", true);
      busy = false;
    }
  }

  async function undo() {
    if (busy) return;
    busy = true;
    try {
      const { status, data } = await call("POST", "/api/undo", {});
      if (status === 200) {
        go(data.undone.idx);
        return;
      }
      say(data.error || ("error " + status), true);
    } catch (err) {
      say("the server did not answer (" + err + ")", true);
    }
    busy = false;
  }

  async function pollRound() {
    try {
      const { data } = await call("GET", withToken("/api/round"));
      const job = data.job || {};
      if (job.state === "running") {
        const seconds = document.getElementById("job-seconds");
        if (seconds) seconds.textContent = String(job.seconds);
        setTimeout(pollRound, 1000);
      } else {
        window.location.reload();
      }
    } catch (err) {
      setTimeout(pollRound, 3000);
    }
  }

  async function runRound() {
    if (busy) return;
    busy = true;
    const { status, data } = await call("POST", "/api/round", {});
    if (status === 202) {
      const button = document.getElementById("run-round");
      if (button) button.disabled = true;
      const job = document.getElementById("job");
      job.hidden = false;
      job.textContent = "";
      const line = document.createElement("p");
      line.append("Round " + data.job.round + " is running… ");
      const seconds = document.createElement("span");
      seconds.id = "job-seconds";
      seconds.textContent = "0";
      line.append(seconds, " s");
      job.append(line);
      pollRound();
    } else {
      say(data.error || ("error " + status), true);
      busy = false;
    }
  }

  async function pollPrediction() {
    if (idx === null) return;
    try {
      const { data } = await call("GET", withToken("/api/items/" + idx));
      const p = data.prediction || {};
      if (p.state === "computing") {
        setTimeout(pollPrediction, 2000);
        return;
      }
      const target = document.getElementById("prediction");
      if (target) {
        target.textContent = p.state === "ready"
          ? p.label_name + " (" + Math.round(100 * p.confidence) + "% confident)"
          : p.message;
      }
    } catch (err) {
      setTimeout(pollPrediction, 5000);
    }
  }

  document.querySelectorAll("button.label").forEach(function (button) {
    button.addEventListener("click", function () { answer(button.dataset.label); });
  });
  const undoButton = document.getElementById("undo");
  if (undoButton) undoButton.addEventListener("click", undo);
  const runButton = document.getElementById("run-round");
  if (runButton) runButton.addEventListener("click", runRound);

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
    const key = event.key.toLowerCase();
    const button = document.querySelector('button.label[data-key="' + key + '"]');
    if (button) {
      event.preventDefault();
      button.click();
    } else if (key === "s" && body.dataset.skipUrl) {
      event.preventDefault();
      window.location.assign(body.dataset.skipUrl);
    } else if (key === "u" || key === "z") {
      event.preventDefault();
      undo();
    } else if (key === "enter" && runButton && !runButton.disabled) {
      event.preventDefault();
      runRound();
    }
  });

  if (body.dataset.job === "running") pollRound();
  if (body.dataset.prediction === "computing") pollPrediction();
  body.dataset.ready = "1";  // the keys work from here on (browser tests wait for it)
})();
