// The playground: stream a chat answer from the console's own endpoint (same-origin, the
// session cookie and its CSRF token), showing text as it arrives and the cost at the end.
// Send stays disabled while an answer streams: one answer per box.
(function () {
  var form = document.getElementById("playground");
  if (!form) return;
  var send = document.getElementById("send"), label = send.textContent;

  async function stream(answer, cost) {
    var response = await fetch(form.dataset.url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf,
                "Accept-Language": document.documentElement.lang},  // errors in the page's language
      body: JSON.stringify({model: document.getElementById("model").value,
                            prompt: document.getElementById("prompt").value})
    });
    if (!response.ok || !response.body) {
      var failed = await response.text();
      try { answer.textContent = JSON.parse(failed).error.message; } catch (e) { answer.textContent = failed; }
      return;
    }
    var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
    for (;;) {
      var part = await reader.read();
      if (part.done) break;
      buffer += decoder.decode(part.value, {stream: true});
      var events = buffer.split("\n\n");
      buffer = events.pop();
      events.forEach(function (raw) {
        if (raw.indexOf("data: {") !== 0) return;
        var chunk = JSON.parse(raw.slice(6));
        if (chunk.error) { answer.textContent += "\n[" + chunk.error.message + "]"; return; }
        (chunk.choices || []).forEach(function (c) {
          if (c.delta && c.delta.content) answer.textContent += c.delta.content;
        });
        if (chunk.usage) cost.textContent = String(chunk.usage.cost);
      });
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (send.disabled) return;
    var answer = document.getElementById("answer"), cost = document.getElementById("cost");
    answer.textContent = ""; cost.textContent = "";
    send.disabled = true; send.textContent = form.dataset.sending;
    delete form.dataset.done;
    try {
      await stream(answer, cost);
    } catch (e) {
      answer.textContent += "\n[" + e + "]";
    } finally {
      send.disabled = false; send.textContent = label;
      form.dataset.done = "1";
    }
  });
})();
