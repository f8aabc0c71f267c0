"""Front doors other than Chat Completions: each translates its API's request into the chat
call the pipeline runs, and the chat answer (a body or a chunk stream) back into its own shape.
No Flask here: the web layer (service/web/messages.py, service/web/responses.py) wires them in."""
