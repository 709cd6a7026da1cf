"""The descriptor generator against a scripted local chat-completions server (no network, seconds)."""
import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from avalanche_convprompt.language.descriptors import load_descriptors
from avalanche_convprompt.language.descriptors import generate as gen
from avalanche_convprompt.language.descriptors.generate import (
    DescriptorGenerationError, EndpointError, UnusableAnswerError, ask_descriptors, build_messages,
    cache_file_name, generate_descriptor_file, main, parse_descriptors, read_class_list, readable_name)

DESCS = {
    "apple": ["round shape", "smooth glossy skin", "short stem on top", "red or green colour",
              "often in a fruit bowl"],
    "zebra": ["black and white stripes", "horse-like body", "short upright mane", "long face",
              "grassy savanna background"],
    "kettle": ["rounded metal body", "curved spout", "handle on top", "lid with knob", "on a kitchen stove"],
    "maple tree": ["lobed leaves", "red or orange foliage", "grey bark", "broad rounded crown",
                   "winged seeds"],
    "sunflower": ["large yellow petals", "dark brown centre", "tall green stem", "broad leaves",
                  "faces the sun"],
}
NAMES = list(DESCS)
FAST = dict(backoff=0.01, max_backoff=0.02, timeout=5.0, progress=False)


# ------------------------------------------------------------------------------------------ server

@dataclass
class Request:
    index: int          # 0-based, over all requests this server saw
    name: str | None    # the class the prompt asks about
    attempt: int        # 1-based, requests so far for this class
    headers: dict
    body: dict


def reply(content, status=200):
    return status, {"id": "x", "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}]}


def ok(req):
    return reply(json.dumps(DESCS[req.name]))


class FakeLLM:
    """``ThreadingHTTPServer`` on 127.0.0.1:0 answering ``POST /v1/chat/completions`` with
    ``respond(Request) -> (status, JSON object | str | bytes[, delay_s[, headers]])``."""

    def __init__(self):
        self.respond = ok
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                prompt = body["messages"][-1]["content"]
                name = next((n for n in sorted(DESCS, key=len, reverse=True) if f'"{n}"' in prompt), None)
                with fake.lock:
                    attempt = 1 + sum(r.name == name for r in fake.requests)
                    req = Request(len(fake.requests), name, attempt, dict(self.headers), body)
                    fake.requests.append(req)
                if self.path != "/v1/chat/completions":
                    status, payload, delay, extra = 404, {"error": "not found"}, 0, {}
                else:
                    out = fake.respond(req)
                    status, payload = out[0], out[1]
                    delay = out[2] if len(out) > 2 else 0
                    extra = out[3] if len(out) > 3 else {}
                if delay:
                    time.sleep(delay)
                data = payload if isinstance(payload, bytes) else (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def count(self, name=None):
        return len(self.requests) if name is None else sum(r.name == name for r in self.requests)

    def reset(self, respond=ok):
        self.respond = respond
        self.requests.clear()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm():
    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _no_proxy_no_key(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ parsing

BULLETS = "Here are the attributes of an apple:\n\n- round shape\n- smooth glossy skin\n" \
          "* short stem on top\n- red or green colour.\n- often in a fruit bowl\n\nHope this helps!"


@pytest.mark.parametrize("answer", [
    json.dumps(DESCS["apple"]),
    "Sure! Here is the list:\n```json\n" + json.dumps(DESCS["apple"], indent=2) + "\n```\nLet me know.",
    "The descriptors are " + json.dumps(DESCS["apple"]) + " as requested.",
    json.dumps({"descriptors": DESCS["apple"]}),
    json.dumps({"apple": {"visual attributes": DESCS["apple"]}}),
    BULLETS,
    "1. round shape\n2. smooth glossy skin\n3) short stem on top\n4. red or green colour\n5. often in a fruit bowl",
    "<think>The user wants [\"x\"] maybe.</think>\n" + json.dumps(DESCS["apple"]),
], ids=["bare", "fenced", "prose", "object", "nested", "bullets", "numbered", "think"])
def test_parse_accepts_common_answer_shapes(answer):
    assert parse_descriptors(answer) == DESCS["apple"]


def test_parse_cleans_items():
    long = "a very long descriptor that is really a whole sentence and not a short visual attribute"
    answer = json.dumps(["  round   shape. ", '"smooth glossy skin"', "Round Shape", "", long, 3,
                         "short stem on top;", "- red or green colour", "often in a fruit bowl",
                         "waxy", "six", "seven", "eight", "nine"])
    assert parse_descriptors(answer, max_descriptors=8) == [
        "round shape", "smooth glossy skin", "short stem on top", "red or green colour",
        "often in a fruit bowl", "waxy", "six", "seven"]


@pytest.mark.parametrize("answer", ["I cannot help with that.", '["round", "red", "round"]', "", "   ",
                                    '{"descriptors": []}', "- round\n- red"])
def test_parse_rejects_garbage(answer):
    with pytest.raises(UnusableAnswerError, match="usable descriptors|empty answer"):
        parse_descriptors(answer)


def test_prompt_asks_for_a_json_list_of_visual_attributes():
    msgs = build_messages("apple", dataset="CIFAR-100", min_descriptors=5, max_descriptors=8)
    text = " ".join(m["content"] for m in msgs)
    assert msgs[-1]["role"] == "user" and '"apple"' in msgs[-1]["content"]
    for word in ("JSON list", "5 to 8", "shape", "colour", "texture", "CIFAR-100"):
        assert word in text


def test_class_list_file_and_names(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\n\napple\n  aquarium_fish  \nn01443537\tgoldfish\n# done\n"
                 "001.Black_footed_Albatross\n", encoding="utf-8")
    assert read_class_list(f) == [("apple", "apple"), ("aquarium_fish", "aquarium fish"),
                                  ("n01443537", "goldfish"),
                                  ("001.Black_footed_Albatross", "Black footed Albatross")]
    assert readable_name("sweet_pepper") == "sweet pepper"
    f.write_text("apple\napple\n", encoding="utf-8")
    with pytest.raises(ValueError, match="listed twice"):
        read_class_list(f)


# ------------------------------------------------------------------------------------------ success

@pytest.mark.parametrize("fmt", ["bare", "fenced", "bullets"])
def test_answers_are_written_to_a_loadable_file(llm, tmp_path, fmt):
    def respond(req):
        d = DESCS[req.name]
        if fmt == "bare":
            return reply(json.dumps(d))
        if fmt == "fenced":
            return reply(f"Here you go:\n```json\n{json.dumps(d, indent=1)}\n```\nThese are visual.")
        return reply("Attributes:\n" + "\n".join(f"- {x}" for x in d))

    llm.respond = respond
    out = tmp_path / "mine.json"
    ds = generate_descriptor_file(["apple", "zebra", "maple_tree"], out, base_url=llm.base_url, model="m", **FAST)
    assert ds.keys() == ["apple", "zebra", "maple_tree"]
    loaded = load_descriptors(out)
    assert loaded.dataset == "mine" and "m" in loaded.source
    assert loaded.name("maple_tree") == "maple tree"
    for key, name in [("apple", "apple"), ("zebra", "zebra"), ("maple_tree", "maple tree")]:
        assert loaded.descriptors(key) == DESCS[name]
    assert llm.count() == 3
    body = llm.requests[0].body
    assert body["model"] == "m" and body["temperature"] == 0.0 and body["messages"][0]["role"] == "system"
    assert "Authorization" not in llm.requests[0].headers  # no key set: no header
    assert not [p for p in files_under(tmp_path) if p.name.endswith(".tmp")]


def test_slow_answer_times_out_and_retry_succeeds(llm, tmp_path):
    llm.respond = lambda req: (*ok(req), 1.0 if req.index == 0 else 0)
    t0 = time.monotonic()
    ds = generate_descriptor_file(["apple"], tmp_path / "o.json", base_url=llm.base_url, model="m",
                                  **{**FAST, "timeout": 0.3})
    assert time.monotonic() - t0 < 0.95  # did not wait for the slow answer
    assert ds.descriptors("apple") == DESCS["apple"]
    assert llm.count() == 2


def test_malformed_then_good_answer_is_retried(llm, tmp_path):
    llm.respond = lambda req: reply("no idea") if req.attempt == 1 else ok(req)
    ds = generate_descriptor_file(["kettle"], tmp_path / "o.json", base_url=llm.base_url, model="m", **FAST)
    assert ds.descriptors("kettle") == DESCS["kettle"] and llm.count() == 2


def test_back_off_doubles_and_is_capped(llm):
    llm.respond = lambda req: (500, {"error": "boom"})
    waits = []
    with pytest.raises(EndpointError, match="gave up after 5 attempts.*HTTP 500"):
        ask_descriptors("apple", base_url=llm.base_url, model="m", max_retries=4, backoff=0.5,
                        max_backoff=2.0, sleep=waits.append)
    assert waits == [0.5, 1.0, 2.0, 2.0]
    assert llm.count() == 5


# ------------------------------------------------------------------------------------------ failures

def test_always_500_fails_cleanly_and_caches_only_finished_classes(llm, tmp_path):
    llm.respond = lambda req: ok(req) if req.name == "apple" else (500, {"error": "internal"})
    out = tmp_path / "o.json"
    with pytest.raises(DescriptorGenerationError) as info:
        generate_descriptor_file(["apple", "zebra", "kettle"], out, base_url=llm.base_url, model="m",
                                 max_retries=3, **FAST)
    msg = str(info.value)
    assert "zebra" in msg and "HTTP 500" in msg and "4 attempts" in msg and "rerun" in msg
    assert "\n" not in msg
    assert llm.count("apple") == 1 and llm.count("zebra") == 4 and llm.count("kettle") == 0
    assert not out.exists()
    cache = tmp_path / "o.json.cache"
    assert [p.name for p in files_under(tmp_path)] == [cache_file_name("apple")]
    assert json.loads((cache / cache_file_name("apple")).read_text())["descriptors"] == DESCS["apple"]


def test_failure_leaves_an_existing_output_untouched(llm, tmp_path):
    out = tmp_path / "o.json"
    out.write_text("previous", encoding="utf-8")
    llm.respond = lambda req: (503, "down")
    with pytest.raises(EndpointError):
        generate_descriptor_file(["apple"], out, base_url=llm.base_url, model="m", max_retries=1, **FAST)
    assert out.read_text(encoding="utf-8") == "previous"
    assert files_under(tmp_path) == [out]  # no temporaries, no (empty) cache folder content


@pytest.mark.parametrize("status,match", [(401, "API key was refused"), (403, "API key was refused"),
                                          (404, "model name 'm'.*/v1")])
def test_auth_and_not_found_fail_at_once(llm, tmp_path, status, match):
    llm.respond = lambda req: (status, {"error": {"message": "nope"}})
    with pytest.raises(EndpointError, match=match) as info:
        generate_descriptor_file(["apple", "zebra"], tmp_path / "o.json", base_url=llm.base_url, model="m",
                                 **FAST)
    assert info.value.status == status and not info.value.retryable
    assert llm.count() == 1
    assert not (tmp_path / "o.json").exists()


def test_wrong_base_url_path_gives_404_hint(llm, tmp_path):
    base = llm.base_url[:-len("/v1")]  # forgot /v1
    with pytest.raises(EndpointError, match="/v1"):
        generate_descriptor_file(["apple"], tmp_path / "o.json", base_url=base, model="m", **FAST)
    assert llm.count() == 1


@pytest.mark.parametrize("respond,quoted", [
    (lambda req: reply("I am sorry, I cannot describe that."), "I am sorry"),
    (lambda req: reply('["roundish"]'), "roundish"),
    (lambda req: reply(""), "empty answer"),
    (lambda req: (200, {"error": {"message": "model overloaded xyz"}}), "model overloaded xyz"),
    (lambda req: (200, b"<html>Bad gateway page</html>"), "Bad gateway page"),
], ids=["not-json", "too-few", "empty-content", "missing-choices", "html-body"])
def test_malformed_answers_are_retried_then_fail_quoting_the_answer(llm, tmp_path, respond, quoted):
    llm.respond = respond
    out = tmp_path / "o.json"
    with pytest.raises(DescriptorGenerationError, match="gave up after 3 attempts") as info:
        generate_descriptor_file(["apple"], out, base_url=llm.base_url, model="m", max_retries=2, **FAST)
    assert quoted in str(info.value) and "'apple'" in str(info.value)
    assert llm.count() == 3
    assert not out.exists()


def test_long_garbage_is_quoted_truncated(llm, tmp_path):
    llm.respond = lambda req: reply("blah " * 500)
    with pytest.raises(UnusableAnswerError) as info:
        generate_descriptor_file(["apple"], tmp_path / "o.json", base_url=llm.base_url, model="m",
                                 max_retries=0, **FAST)
    assert "blah blah" in str(info.value) and "..." in str(info.value) and len(str(info.value)) < 600


def test_unreachable_endpoint_names_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError) as info:
        generate_descriptor_file(["apple"], tmp_path / "o.json", base_url=url, model="m", max_retries=1, **FAST)
    msg = str(info.value)
    assert url in msg and "server running" in msg and "/v1" in msg and "2 attempts" in msg
    assert "Traceback" not in msg and "\n" not in msg
    assert files_under(tmp_path) == []


# ------------------------------------------------------------------------------------------ resume

def test_resume_after_server_failure_asks_only_missing_classes(llm, tmp_path):
    out = tmp_path / "o.json"
    llm.respond = lambda req: ok(req) if NAMES.index(req.name) < 2 else (500, "down")
    with pytest.raises(EndpointError, match="2 of 5 classes are cached"):
        generate_descriptor_file(NAMES, out, base_url=llm.base_url, model="m", max_retries=1, **FAST)
    assert not out.exists()
    assert len(files_under(tmp_path / "o.json.cache")) == 2

    llm.reset(ok)
    ds = generate_descriptor_file(NAMES, out, base_url=llm.base_url, model="m", max_retries=1, **FAST)
    assert {n: llm.count(n) for n in NAMES} == {"apple": 0, "zebra": 0, "kettle": 1, "maple tree": 1,
                                                "sunflower": 1}
    assert ds.keys() == NAMES and load_descriptors(out).keys() == NAMES
    assert all(ds.descriptors(n) == DESCS[n] for n in NAMES)

    llm.reset(ok)  # everything cached: a rerun asks nothing and rewrites the same file
    generate_descriptor_file(NAMES, out, base_url=llm.base_url, model="m", **FAST)
    assert llm.count() == 0 and load_descriptors(out).keys() == NAMES


def test_resume_after_ctrl_c(llm, tmp_path, monkeypatch):
    real = gen.ask_descriptors

    def interrupted(name, **kw):
        if name == "kettle":
            raise KeyboardInterrupt
        return real(name, **kw)

    monkeypatch.setattr(gen, "ask_descriptors", interrupted)
    out = tmp_path / "o.json"
    with pytest.raises(KeyboardInterrupt):
        generate_descriptor_file(NAMES, out, base_url=llm.base_url, model="m", **FAST)
    assert not out.exists() and llm.count() == 2
    monkeypatch.setattr(gen, "ask_descriptors", real)
    llm.reset(ok)
    generate_descriptor_file(NAMES, out, base_url=llm.base_url, model="m", **FAST)
    assert llm.count() == 3 and llm.count("apple") == 0
    assert load_descriptors(out).keys() == NAMES


def test_cache_files_are_hashed_and_changed_names_are_asked_again(llm, tmp_path):
    keys = [("a/b", "apple"), ("../x", "zebra"), ("n 1:?*", "kettle")]
    out = tmp_path / "o.json"
    generate_descriptor_file(keys, out, base_url=llm.base_url, model="m", **FAST)
    cache = tmp_path / "o.json.cache"
    assert sorted(p.name for p in cache.iterdir()) == sorted(cache_file_name(k) for k, _ in keys)
    assert load_descriptors(out).name("a/b") == "apple"
    llm.reset(ok)
    generate_descriptor_file([("a/b", "sunflower"), ("../x", "zebra")], out, base_url=llm.base_url,
                             model="m", **FAST)
    assert llm.count() == 1 and llm.count("sunflower") == 1


# ------------------------------------------------------------------------------------------ API key

def test_api_key_is_sent_but_never_leaked(llm, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv("MY_LLM_KEY", key)
    seen = []

    def respond(req):
        seen.append(req.headers.get("Authorization"))
        if req.name == "zebra" and req.attempt == 1:  # an error body that echoes the key, then fine
            return 500, {"error": f"bad things with {req.headers.get('Authorization')}"}
        return ok(req)

    llm.respond = respond
    out = tmp_path / "o.json"
    generate_descriptor_file(["apple", "zebra"], out, base_url=llm.base_url, model="m",
                             api_key_env="MY_LLM_KEY", **{**FAST, "progress": True})
    assert seen and all(h == f"Bearer {key}" for h in seen)

    # refused key whose error body quotes it: the message blanks it out
    llm.reset(lambda req: (401, {"error": f"invalid key {req.headers.get('Authorization')}"}))
    with pytest.raises(EndpointError) as info:
        generate_descriptor_file(["kettle"], tmp_path / "p.json", base_url=llm.base_url, model="m",
                                 api_key_env="MY_LLM_KEY", **FAST)
    assert "MY_LLM_KEY" in str(info.value) and "***" in str(info.value)
    messages = [str(info.value), repr(info.value)]

    # the command line, failing on garbage that repeats the key
    llm.reset(lambda req: reply(f"my key is {req.headers.get('Authorization')}"))
    rc = main(["--classes", "sunflower", "--output", str(tmp_path / "q.json"), "--base-url", llm.base_url,
               "--model", "m", "--api-key-env", "MY_LLM_KEY", "--retries", "1", "--backoff", "0.01"])
    assert rc == 2
    captured = capsys.readouterr()
    assert "***" in captured.err

    assert key not in captured.out + captured.err
    assert key not in caplog.text and "retrying" in caplog.text
    assert all(key not in m for m in messages)
    for path in files_under(tmp_path):
        assert key.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------------------ CLI

def test_cli_writes_the_file_from_a_classes_file(llm, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("# test classes\napple\n\nn99\tzebra\n", encoding="utf-8")
    out = tmp_path / "out" / "my_dataset.json"
    rc = main(["--classes-file", str(classes), "--output", str(out), "--base-url", llm.base_url,
               "--model", "llama3.1", "--timeout", "5", "--retries", "1", "--dataset", "Tiny"])
    assert rc == 0
    ds = load_descriptors(out)
    assert ds.dataset == "Tiny" and ds.keys() == ["apple", "n99"] and ds.name("n99") == "zebra"
    assert ds.descriptors("n99") == DESCS["zebra"]
    assert "Tiny" in llm.requests[0].body["messages"][-1]["content"]
    assert str(out) in capsys.readouterr().out


def test_cli_classes_on_the_command_line(llm, tmp_path):
    out = tmp_path / "o.json"
    assert main(["--classes", "apple", "kettle", "--output", str(out), "--base-url", llm.base_url + "/",
                 "--model", "m", "-q"]) == 0
    assert load_descriptors(out).keys() == ["apple", "kettle"]


def test_cli_unreachable_exits_2_with_one_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    rc = main(["--classes", "apple", "--output", str(tmp_path / "o.json"), "--base-url", url, "--model", "m",
               "--retries", "1", "--backoff", "0.01", "-q"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("generate-descriptors: error:")
    assert url in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


def test_cli_bad_input_exits_2(tmp_path, capsys):
    rc = main(["--classes-file", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o.json"),
               "--base-url", "http://127.0.0.1:1/v1", "--model", "m"])
    assert rc == 2 and "missing.txt" in capsys.readouterr().err
    rc = main(["--classes", "a", "--output", str(tmp_path / "o.json"), "--base-url", "localhost:11434",
               "--model", "m"])
    assert rc == 2 and "http://" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ layout

def test_generate_still_exports_the_client_and_the_command_line_that_moved_out_of_it():
    """The HTTP client is in llm_client and the command line in cli; generate's names are the same objects."""
    from avalanche_convprompt.language.descriptors import cli, llm_client
    for name in ("chat_completion", "DescriptorGenerationError", "EndpointError", "UnusableAnswerError", "_Deadline",
                 "_WatchedConnections", "_DeadlineHTTPHandler", "_DeadlineHTTPSHandler", "_exchange", "_http_error",
                 "_retry_after", "_message_content", "_endpoint_url", "_display_url", "_timeout_error", "_excerpt",
                 "_redact", "_one_line"):
        assert getattr(gen, name) is getattr(llm_client, name), name
    for name in ("main", "_parser", "_temperature"):
        assert getattr(gen, name) is getattr(cli, name), name
    assert main is cli.main
    assert not {"urllib", "http", "socket", "threading", "argparse"} & set(vars(gen))   # no HTTP or CLI code left
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        gen.no_such_name  # noqa: B018


def test_ask_descriptors_uses_the_chat_completion_of_generate(monkeypatch):
    """generate.chat_completion stays the place to patch the client for the generation logic."""
    answers = iter(["not a list", json.dumps(DESCS["apple"])])
    monkeypatch.setattr(gen, "chat_completion", lambda *a, **k: next(answers))
    assert ask_descriptors("apple", base_url="http://127.0.0.1:1/v1", model="m", backoff=0, sleep=lambda s: None) \
        == DESCS["apple"]


def test_python_dash_m_generate_writes_the_file(llm, tmp_path):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "o.json"
    done = subprocess.run([sys.executable, "-m", "avalanche_convprompt.language.descriptors.generate",
                           "--classes", "apple", "zebra", "--output", str(out), "--base-url", llm.base_url,
                           "--model", "m", "-q"], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"wrote 2 classes to {out}"
    assert load_descriptors(out).keys() == ["apple", "zebra"]
