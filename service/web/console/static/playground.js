// The playground: stream a chat answer from the console's own endpoint (same-origin, the
// session cookie and its CSRF token), showing text as it arrives and the cost at the end.
// Compare mode sends the ticked models (2 to 4) as one call with `models` and parallel "all":
// each chunk goes to the panel of its choices[0].index (the panel of the model it names), a
// model that fails shows its error in its own panel, and each panel's cost is its model's
// entry in the usage chunk's `by_model`. Send stays disabled while an answer streams.
(function () {
  var form = document.getElementById("playground");
  if (!form) return;
  var send = document.getElementById("send"), label = send.textContent;
  var compare = document.getElementById("compare");

  function showMode() {
    document.getElementById("pick-one").hidden = compare.checked;
    document.getElementById("pick-many").hidden = !compare.checked;
    document.getElementById("single").hidden = compare.checked;
    document.getElementById("compared").hidden = !compare.checked;
  }
  compare.addEventListener("change", showMode);
  showMode();  // a checkbox the browser restored on reload

  function post(payload) {
    return fetch(form.dataset.url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf,
                "Accept-Language": document.documentElement.lang},  // errors in the page's language
      body: JSON.stringify(Object.assign({prompt: document.getElementById("prompt").value}, payload))
    });
  }

  async function failure(response) {  // the contract's error body: its message
    var text = await response.text();
    try { return JSON.parse(text).error.message; } catch (e) { return text; }
  }

  async function each(response, take) {  // every data event of the stream, parsed, as it comes
    var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
    for (;;) {
      var part = await reader.read();
      if (part.done) break;
      buffer += decoder.decode(part.value, {stream: true});
      var events = buffer.split("\n\n");
      buffer = events.pop();
      events.forEach(function (raw) {
        if (raw.indexOf("data: {") === 0) take(JSON.parse(raw.slice(6)));
      });
    }
  }

  async function one() {
    var answer = document.getElementById("answer"), cost = document.getElementById("cost");
    answer.textContent = ""; cost.textContent = "";
    var response = await post({model: document.getElementById("model").value});
    if (!response.ok || !response.body) { answer.textContent = await failure(response); return; }
    await each(response, function (chunk) {
      if (chunk.error) { answer.textContent += "\n[" + chunk.error.message + "]"; return; }
      (chunk.choices || []).forEach(function (c) {
        if (c.delta && c.delta.content) answer.textContent += c.delta.content;
      });
      if (chunk.usage) cost.textContent = String(chunk.usage.cost);
    });
  }

  function panelsFor(names) {  // one panel per model, in the order sent: panel i is models[i]
    var box = document.getElementById("panels"), template = document.getElementById("panel-template");
    box.textContent = "";
    return names.map(function (name) {
      var panel = template.content.firstElementChild.cloneNode(true);
      panel.dataset.model = name;
      panel.querySelector(".name").textContent = name;
      box.appendChild(panel);
      return panel;
    });
  }

  function route(panels, chunk) {
    var choice = (chunk.choices || [])[0], panel = choice && panels[choice.index];
    if (panel && panel.dataset.model === chunk.model) {
      if (choice.error) {
        panel.querySelector(".error").textContent = choice.error.message;
        panel.classList.add("failed");
      } else if (choice.delta && choice.delta.content) {
        panel.querySelector(".text").textContent += choice.delta.content;
      }
      if (choice.finish_reason) panel.dataset.finish = choice.finish_reason;
    }
    if (!chunk.usage) return;
    (chunk.usage.by_model || []).forEach(function (used, i) {
      if (panels[i] && panels[i].dataset.model === used.model) {
        panels[i].querySelector(".cost").textContent = String(used.cost);
      }
    });
    document.getElementById("total-cost").textContent = String(chunk.usage.cost);
  }

  async function several() {
    var problem = document.getElementById("compare-error");
    var names = Array.prototype.map.call(form.querySelectorAll("input[name=models]:checked"),
                                         function (box) { return box.value; });
    problem.textContent = ""; document.getElementById("total-cost").textContent = "";
    var panels = panelsFor(names);
    var response = await post({models: names});
    if (!response.ok || !response.body) { panelsFor([]); problem.textContent = await failure(response); return; }
    await each(response, function (chunk) {
      if (chunk.error) { problem.textContent = chunk.error.message; return; }  // the call's own failure
      route(panels, chunk);
    });
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (send.disabled) return;
    var comparing = compare.checked;
    send.disabled = true; send.textContent = form.dataset.sending;
    delete form.dataset.done;
    try {
      await (comparing ? several() : one());
    } catch (e) {
      var where = document.getElementById(comparing ? "compare-error" : "answer");
      where.textContent += "\n[" + e + "]";
    } finally {
      send.disabled = false; send.textContent = label;
      form.dataset.done = "1";
    }
  });
})();
