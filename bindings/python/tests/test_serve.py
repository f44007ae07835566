"""`lorakit serve` (issue 13): the OpenAI-compatible server, driven by the `openai` Python client.

Starts the server on a free port with the real model and two random LoRA adapters made with the library,
and checks every answer against the same generation done by `lorakit generate` (a single context with the
adapter attached at the same scale): greedy and seeded sampling, streaming and not, completions and chat,
concurrent requests, adapter load/unload, the 400/401/429 errors and a client leaving mid-stream.
"""
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
ROOT = HERE.parents[2]
CLI = os.environ.get("LORAKIT_CLI", str(ROOT / ".build" / "release" / "lorakit-cli"))
MODEL = os.environ.get("LORAKIT_MODEL", "")

try:
    import openai
except ImportError:  # scripts/setup.sh installs it
    openai = None

pytestmark = [
    pytest.mark.skipif(not MODEL or not Path(MODEL).exists(), reason="LORAKIT_MODEL not set (model download failed?)"),
    pytest.mark.skipif(openai is None, reason="the openai package is not importable: run scripts/setup.sh "
                                              "(pip install openai) to test `lorakit serve`"),
]

KEY = "sk-lorakit-test"
CTX = 256
BASE = Path(MODEL).name.removesuffix(".gguf") if MODEL else ""


class Server:
    """A `lorakit serve` process on a free port (the server picks it with --port 0 and prints it)."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([CLI, "serve", "--model", MODEL, "--port", "0", "--threads", "2", *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        self.port = None
        found = threading.Event()

        def drain():  # read stderr to the end, so the server never blocks on a full pipe
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"lorakit serve: listening on http://[^:]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    found.set()
            found.set()
        threading.Thread(target=drain, daemon=True).start()
        found.wait(60)
        if self.port is None:
            self.stop()
            raise AssertionError(f"server did not start (exit {self.proc.poll()}): {''.join(self.log)}")

    def client(self, key=KEY, **kw):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0, timeout=120, **kw)

    def request(self, method, path, body=None, key=KEY, raw=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        out = r.status, r.read().decode()
        c.close()
        return out

    def metrics(self):
        status, text = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def generate(prompt, adapter=None, chat=False, max_tokens=16, temp=0.0, seed=0, stop=(), kv_type="f32"):
    """The same request through `lorakit generate` (one context, the adapter attached at scale 1)."""
    args = [CLI, "generate", "--model", MODEL, "--prompt", prompt, "--max-tokens", str(max_tokens), "--temp", str(temp),
            "--top-k", "0", "--top-p", "1", "--min-p", "0", "--seed", str(seed), "--threads", "2", "--ctx", str(CTX),
            "--kv-type", kv_type, "--json"]
    if adapter:
        args += ["--adapter", str(adapter)]
    if chat:
        args += ["--chat"]
    for s in stop:
        args += ["--stop", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    import lorakit
    d = tmp_path_factory.mktemp("serve_adapters")
    paths = {}
    with lorakit.Model(MODEL) as m:
        for i, (name, targets) in enumerate([("alpha", "q,v"), ("beta", "q,k,v,o"), ("gamma", "q,v")]):
            a = lorakit.Adapter.create(m, rank=4, alpha=64, targets=targets, init="random", seed=11 + i)
            paths[name] = d / name
            a.save(paths[name])
            a.close()
    return paths


@pytest.fixture(scope="module")
def server(adapters):
    s = Server("--adapter", f"alpha={adapters['alpha']}", "--adapter", f"beta={adapters['beta']}",
               "--max-sequences", "4", "--max-queue", "16", "--ctx", CTX, "--api-key", KEY)
    yield s
    s.stop()


def test_models_and_health(server, adapters):
    status, body = server.request("GET", "/health", key=None)
    assert status == 200 and json.loads(body)["status"] == "ok"
    models = {m.id: m for m in server.client().models.list().data}
    assert set(models) == {BASE, "alpha", "beta"}
    assert models["alpha"].model_extra["parent"] == BASE and models["beta"].model_extra["parent"] == BASE
    assert models[BASE].model_extra["parent"] is None
    assert models["alpha"].model_extra["root"] == str(adapters["alpha"])


def test_completions_equal_generate_per_adapter(server, adapters):
    client = server.client()
    prompt = "The capital of France is"
    texts = {}
    for model, path in [(BASE, None), ("alpha", adapters["alpha"]), ("beta", adapters["beta"])]:
        r = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
        ref = generate(prompt, path, max_tokens=12)
        assert r.choices[0].text == ref["text"], model
        assert r.model == model and r.object == "text_completion"
        assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == len(ref["tokens"])
        assert r.choices[0].finish_reason == ("length" if ref["stop_reason"] == "length" else "stop")
        texts[model] = r.choices[0].text
    assert texts[BASE].startswith(" Paris")
    assert len(set(texts.values())) == 3, texts  # each adapter changes the output

    # Streaming: the pieces add up to the same text, the last chunk says why it ended, then [DONE].
    pieces, finish = [], None
    for chunk in client.completions.create(model="alpha", prompt=prompt, max_tokens=12, temperature=0, stream=True):
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == texts["alpha"] and finish == "length" and len(pieces) > 3


def test_chat_equal_generate_chat(server, adapters):
    client = server.client()
    q = "What is the capital of France?"
    r = client.chat.completions.create(model="beta", messages=[{"role": "user", "content": q}], max_tokens=20, temperature=0)
    ref = generate(q, adapters["beta"], chat=True, max_tokens=20)
    assert r.choices[0].message.content == ref["text"] and r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion" and r.usage.completion_tokens == len(ref["tokens"])
    base = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": q}], max_tokens=20, temperature=0)
    assert base.choices[0].message.content == generate(q, chat=True, max_tokens=20)["text"]
    assert "Paris" in base.choices[0].message.content
    stream = client.chat.completions.create(model="beta", messages=[{"role": "user", "content": q}], max_tokens=20,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref["text"]
    assert chunks[-1].usage.completion_tokens == len(ref["tokens"]) and chunks[-1].choices == []


def test_seeded_sampling_and_stop(server, adapters):
    client = server.client()
    prompt = "Once upon a time"
    a = client.completions.create(model="alpha", prompt=prompt, max_tokens=16, temperature=0.9, seed=1234)
    b = client.completions.create(model="alpha", prompt=prompt, max_tokens=16, temperature=0.9, seed=1234)
    ref = generate(prompt, adapters["alpha"], max_tokens=16, temp=0.9, seed=1234)
    assert a.choices[0].text == b.choices[0].text == ref["text"]
    # A stop string: the text ends before it, as `generate --stop` does.
    full = generate("The capital of France is", max_tokens=16)["text"]
    stop = full[8:10]
    ref = generate("The capital of France is", max_tokens=16, stop=[stop])
    r = client.completions.create(model=BASE, prompt="The capital of France is", max_tokens=16, temperature=0, stop=[stop, "zzz"])
    assert r.choices[0].text == ref["text"] and r.choices[0].finish_reason == "stop" and stop not in r.choices[0].text


def test_concurrent_requests_equal_alone(server, adapters):
    client = server.client()
    jobs = [("alpha", "The capital of France is"), ("beta", "Water boils at"), (BASE, "My favourite colour is"),
            ("alpha", "Water boils at"), ("beta", "The capital of France is"), (BASE, "Once upon a time"),
            ("alpha", "My favourite colour is")]
    alone = [client.completions.create(model=m, prompt=p, max_tokens=10, temperature=0).choices[0].text for m, p in jobs]

    def one(job, stream):
        m, p = job
        if stream:
            return "".join(c.choices[0].text for c in client.completions.create(model=m, prompt=p, max_tokens=10,
                                                                                temperature=0, stream=True))
        return client.completions.create(model=m, prompt=p, max_tokens=10, temperature=0).choices[0].text

    with ThreadPoolExecutor(len(jobs)) as ex:
        together = list(ex.map(one, jobs, [i % 2 == 0 for i in range(len(jobs))]))
    assert together == alone
    assert len(set(alone)) >= 5


def expect_error(status, body, code, param=None):
    __tracebackhide__ = True
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert status == code, (status, body)
    if param is not None:
        assert err["param"] == param, err
    return err


def test_bad_requests_get_400_naming_the_field(server):
    def post(body, path="/v1/completions", **kw):
        return server.request("POST", path, body, **kw)
    ok = {"model": BASE, "prompt": "Hi", "max_tokens": 2}
    err = expect_error(*post({**ok, "model": "nope"}), 400, "model")
    assert "nope" in err["message"] and err["code"] == "model_not_found"
    expect_error(*post(None, raw="{not json"), 400)
    expect_error(*post({**ok, "max_tokens": -1}), 400, "max_tokens")
    expect_error(*post({**ok, "n": 2}), 400, "n")
    expect_error(*post({**ok, "temperature": -1}), 400, "temperature")
    expect_error(*post({**ok, "top_p": 0}), 400, "top_p")
    expect_error(*post({**ok, "stop": 3}), 400, "stop")
    expect_error(*post({**ok, "prompt": ""}), 400, "prompt")
    expect_error(*post({**ok, "prompt": [1, 2, 99999999]}), 400, "prompt")
    err = expect_error(*post({**ok, "prompt": "hello " * (CTX + 10)}), 400, "prompt")
    assert err["code"] == "context_length_exceeded" and str(CTX) in err["message"]
    expect_error(*post({"model": BASE}), 400, "prompt")
    expect_error(*post({"model": BASE, "messages": []}, "/v1/chat/completions"), 400, "messages")
    expect_error(*post({"model": BASE, "messages": [{"content": "x"}]}, "/v1/chat/completions"), 400, "messages[0].role")
    expect_error(*post([1, 2]), 400)
    # The openai client sees them as BadRequestError.
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model="nope", prompt="Hi", max_tokens=2)
    assert e.value.body["param"] == "model"
    # Still serving.
    assert server.client().completions.create(model=BASE, prompt="Hi", max_tokens=2, temperature=0).choices[0].text


def test_api_key(server):
    expect_error(*server.request("GET", "/v1/models", key=None), 401)
    expect_error(*server.request("POST", "/v1/completions", {"model": BASE, "prompt": "Hi"}, key="wrong"), 401)
    expect_error(*server.request("GET", "/metrics", key=KEY + "x"), 401)
    with pytest.raises(openai.AuthenticationError):
        server.client(key="sk-wrong").completions.create(model=BASE, prompt="Hi", max_tokens=2)
    assert server.request("GET", "/health", key=None)[0] == 200
    assert server.metrics()['lorakit_requests_rejected_total{reason="unauthorized"}'] >= 4


def test_load_and_unload_adapter(server, adapters):
    client = server.client()
    status, body = server.request("POST", "/v1/load_lora_adapter", {"lora_name": "gamma", "lora_path": str(adapters["gamma"])})
    assert status == 200, body
    assert "gamma" in {m.id for m in client.models.list().data}
    ref = generate("Water boils at", adapters["gamma"], max_tokens=10)
    r = client.completions.create(model="gamma", prompt="Water boils at", max_tokens=10, temperature=0)
    assert r.choices[0].text == ref["text"]
    expect_error(*server.request("POST", "/v1/load_lora_adapter", {"lora_name": "gamma", "lora_path": str(adapters["gamma"])}),
                 400, "lora_name")
    expect_error(*server.request("POST", "/v1/load_lora_adapter", {"lora_name": "delta", "lora_path": "/nonexistent"}),
                 400, "lora_path")
    expect_error(*server.request("POST", "/v1/load_lora_adapter", {"lora_name": BASE, "lora_path": str(adapters["gamma"])}),
                 400, "lora_name")

    # Unload waits for the request that uses the adapter: it completes in full, then the adapter is gone.
    key = 'lorakit_requests_finished_total{model="gamma",reason="length"}'
    before = server.metrics().get(key, 0)
    stream = client.completions.create(model="gamma", prompt="Once upon a time", max_tokens=48, temperature=0,
                                       stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    it = iter(stream)
    chunks = [next(it)]
    result = {}

    def unload():
        result["response"] = server.request("POST", "/v1/unload_lora_adapter", {"lora_name": "gamma"})
        result["finished"] = server.metrics().get(key, 0)
    t = threading.Thread(target=unload)
    t.start()
    chunks += list(it)
    t.join(60)
    assert result["response"][0] == 200, result
    assert result["finished"] == before + 1  # the 48-token request had ended when unload returned
    assert chunks[-1].usage.completion_tokens == 48 and chunks[-2].choices[0].finish_reason == "length"
    assert "gamma" not in {m.id for m in client.models.list().data}
    expect_error(*server.request("POST", "/v1/completions", {"model": "gamma", "prompt": "Hi"}), 400, "model")
    expect_error(*server.request("POST", "/v1/unload_lora_adapter", {"lora_name": "gamma"}), 400, "lora_name")


def test_plugin_adapters_served_in_one_batch(server, adapters):
    """Plugin-type PEFT folders (DoRA, IA³: the SmolLM2 fixtures of Tests/LoRAKitTests/Fixtures/plugins) load
    through /v1/load_lora_adapter and are served in the same batch as LoRA and base requests: every greedy
    answer equals `lorakit generate` with that adapter attached alone."""
    fixtures = ROOT / "Tests" / "LoRAKitTests" / "Fixtures" / "plugins" / "smollm2"
    plugins = {"dora-qv": fixtures / "dora_qv", "ia3-kvd": fixtures / "ia3_kvd"}
    for name, path in plugins.items():
        status, body = server.request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        assert status == 200, body
    client = server.client()
    assert set(plugins) <= {m.id for m in client.models.list().data}
    prompt = "The three primary colors are"
    jobs = [("dora-qv", plugins["dora-qv"]), ("ia3-kvd", plugins["ia3-kvd"]), ("alpha", adapters["alpha"]), (BASE, None)]
    refs = {name: generate(prompt, path, max_tokens=12)["text"] for name, path in jobs}
    assert refs["dora-qv"] != refs[BASE] or refs["ia3-kvd"] != refs[BASE]  # the adapters matter

    def ask(name):
        return client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    with ThreadPoolExecutor(len(jobs)) as ex:
        got = dict(zip([n for n, _ in jobs], ex.map(ask, [n for n, _ in jobs])))
    assert got == refs
    for name in plugins:
        status, body = server.request("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        assert status == 200, body


def test_queue_full_429_and_disconnect_frees_the_sequence():
    s = Server("--max-sequences", "1", "--max-queue", "1", "--ctx", 1024)
    try:
        # A: a long streaming request that takes the only sequence; read its first chunk, keep the socket.
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"model": BASE, "prompt": "Once upon a time", "max_tokens": 1000,
                                                            "temperature": 0, "stream": True, "ignore_eos": True}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        assert resp.readline().startswith(b"data: {")
        # B waits in the queue.
        client = s.client(key="unused")
        with ThreadPoolExecutor(1) as ex:
            fb = ex.submit(lambda: client.completions.create(model=BASE, prompt="Water boils at", max_tokens=8, temperature=0))
            deadline = time.time() + 30
            while s.metrics()["lorakit_queue_length"] < 1:
                assert time.time() < deadline and not fb.done()
                time.sleep(0.02)
            # C: the queue is full.
            status, body = s.request("POST", "/v1/completions", {"model": BASE, "prompt": "Hi", "max_tokens": 2})
            err = expect_error(status, body, 429)
            assert err["code"] == "queue_full"
            with pytest.raises(openai.RateLimitError):
                client.completions.create(model=BASE, prompt="Hi", max_tokens=2)
            # A's client goes away: its sequence is freed and B runs.
            conn.sock.close()
            conn.close()
            b = fb.result(timeout=60)
        assert b.choices[0].text == generate("Water boils at", max_tokens=8)["text"]
        m = s.metrics()
        assert m[f'lorakit_requests_finished_total{{model="{BASE}",reason="cancelled"}}'] == 1
        assert m['lorakit_requests_rejected_total{reason="queue_full"}'] == 2
        assert m["lorakit_running_sequences"] == 0 and m["lorakit_queue_length"] == 0
        # A stopped early: far fewer than its 1000 tokens were generated in all.
        assert m[f'lorakit_generation_tokens_total{{model="{BASE}"}}'] < 8 + 900
    finally:
        s.stop()


def test_disconnect_during_a_non_streaming_request_frees_the_sequence():
    s = Server("--max-sequences", "1", "--ctx", 1024)
    try:
        # A non-streaming request for 1000 tokens; its client goes away while it runs.
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"model": BASE, "prompt": "Once upon a time", "max_tokens": 1000,
                                                            "temperature": 0, "ignore_eos": True}),
                     {"Content-Type": "application/json"})
        deadline = time.time() + 60
        while s.metrics()["lorakit_running_sequences"] < 1:
            assert time.time() < deadline
            time.sleep(0.02)
        conn.sock.close()
        conn.close()
        # Its sequence is freed at the next step, long before 1000 tokens.
        while s.metrics()["lorakit_running_sequences"] > 0:
            assert time.time() < deadline, "the abandoned request kept its sequence"
            time.sleep(0.02)
        m = s.metrics()
        assert m[f'lorakit_requests_finished_total{{model="{BASE}",reason="cancelled"}}'] == 1
        assert m[f'lorakit_generation_tokens_total{{model="{BASE}"}}'] < 900
        # A request that stays connected still gets its whole answer (and the server keeps serving).
        status, body = s.request("POST", "/v1/completions", {"model": BASE, "prompt": "Water boils at", "max_tokens": 8,
                                                             "temperature": 0})
        assert status == 200, body
        assert json.loads(body)["choices"][0]["text"] == generate("Water boils at", max_tokens=8)["text"]
        assert s.metrics()[f'lorakit_requests_finished_total{{model="{BASE}",reason="length"}}'] == 1
    finally:
        s.stop()


def test_contexts_engine_gives_the_same_outputs(server, adapters):
    """--engine contexts (one LlamaContext per sequence) answers as the default batch engine does."""
    s = Server("--engine", "contexts", "--adapter", f"alpha={adapters['alpha']}", "--max-sequences", "3", "--ctx", CTX)
    try:
        assert json.loads(s.request("GET", "/health")[1])["engine"] == "contexts"
        assert json.loads(server.request("GET", "/health")[1])["engine"] == "batch"
        jobs = [("alpha", "Water boils at"), (BASE, "Water boils at"), ("alpha", "Once upon a time"), (BASE, "The quick brown fox")]

        def ask(srv, job):
            return srv.client().completions.create(model=job[0], prompt=job[1], max_tokens=10, temperature=0).choices[0].text
        with ThreadPoolExecutor(len(jobs)) as ex:
            got = list(ex.map(lambda j: ask(s, j), jobs))
        assert got == [ask(server, j) for j in jobs]
    finally:
        s.stop()


def test_f16_kv_cache_serves_what_an_f16_context_generates(adapters):
    """--kv-type f16: concurrent greedy completions equal `lorakit generate --kv-type f16` of each alone."""
    s = Server("--kv-type", "f16", "--adapter", f"alpha={adapters['alpha']}", "--max-sequences", "3", "--ctx", CTX)
    try:
        jobs = [("alpha", "Water boils at"), (BASE, "The quick brown fox"), ("alpha", "Once upon a time")]

        def ask(job):
            return s.client().completions.create(model=job[0], prompt=job[1], max_tokens=12, temperature=0).choices[0].text
        with ThreadPoolExecutor(len(jobs)) as ex:
            got = list(ex.map(ask, jobs))
        want = [generate(p, adapter=adapters["alpha"] if m == "alpha" else None, max_tokens=12, kv_type="f16")["text"]
                for m, p in jobs]
        assert got == want
    finally:
        s.stop()


def test_long_prompts_are_prefilled_in_chunks(adapters):
    """--max-batch-tokens 8: a long prompt is evaluated 8 tokens a step while other streams keep decoding,
    and every answer is still the one `lorakit generate` gives (its whole prompt in one evaluation)."""
    s = Server("--adapter", f"alpha={adapters['alpha']}", "--max-sequences", "3", "--ctx", CTX, "--max-batch-tokens", "8")
    try:
        long_prompt = ("The history of the city begins with a small fishing village on the river, where traders "
                       "from the north and the south met each summer to exchange salt, wool and iron tools, and")
        jobs = [("alpha", long_prompt, adapters["alpha"]), (BASE, "The capital of France is", None),
                ("alpha", "Water boils at", adapters["alpha"]), (BASE, long_prompt, None)]
        client = s.client()

        def ask(job):
            return client.completions.create(model=job[0], prompt=job[1], max_tokens=12, temperature=0)
        with ThreadPoolExecutor(len(jobs)) as ex:
            got = list(ex.map(ask, jobs))
        for (model, prompt, path), r in zip(jobs, got):
            assert r.choices[0].text == generate(prompt, path, max_tokens=12)["text"], (model, prompt)
        prompt_tokens = sum(r.usage.prompt_tokens for r in got)
        assert got[0].usage.prompt_tokens > 30
        m = s.metrics()
        assert m["lorakit_step_tokens_max"] <= 8
        # Every prompt token and every generated token but the last of each request went through a step.
        assert m["lorakit_step_tokens_total"] == prompt_tokens + sum(r.usage.completion_tokens - 1 for r in got)
        assert m["lorakit_steps_total"] >= prompt_tokens / 8
    finally:
        s.stop()
