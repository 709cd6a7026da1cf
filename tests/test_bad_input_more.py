"""More bad input, each refused with a clear error (docs/bad_input.md has the table).

NaN/Inf images, empty test experiences, float and huge labels, a misbehaving LLM endpoint,
adversarial answers, broken dataset trees, corrupt CIFAR files and hostile descriptor files.
"""
import io
import json
import os
import re
import socket
import threading

import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset
from PIL import Image

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.data.experiences import MAX_CLASS_ID
from avalanche_convprompt.data.streams import (ImageFiles, make_stream, read_cub200, read_imagenet_r,
                                               read_imagenet_r_random_split, split_cifar100, split_imagenet_r)
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.language.descriptors import load_descriptors
from avalanche_convprompt.language.descriptors.generate import (EndpointError, UnusableAnswerError, chat_completion,
                                                                main as generate_main, parse_descriptors)
from avalanche_convprompt.language.descriptors.official_classes import IMAGENET_R_WNIDS

from conftest import blob_datasets, refused, tiny_vit
from test_streams import _cub_tree, _image_bytes, _imagenet_r_tree, _write

TINY = dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3, train_mb_size=8, train_epochs=1,
            eval_mb_size=32, device="cpu", evaluator=None)


def finished_within(seconds, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``'s result or exception, or ``TimeoutError`` if it still runs after ``seconds``
    (a guard against hangs: the code under test answers in well under a second)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} still running after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ------------------------------------------------------------------------------------------ NaN / Inf images

def _trained(seed=0):
    train, _ = blob_datasets([0, 1], train_per_class=4)
    strategy = ConvPrompt(backbone=tiny_vit(seed), **dict(TINY, evaluator=default_cl_evaluator(loggers=[])))
    strategy.train(benchmark_from_datasets(train=[train]).train_stream[0])
    return strategy


def test_nan_test_images_are_refused_not_scored_as_class_0():
    strategy = _trained()
    nan_images = tensor_dataset(torch.full((16, 3, 32, 32), float("nan")), torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape(
            "16 of 16 images of experience 0 of stream 'test' hold NaN or infinite values; they are not scored "
            "(their logits would be NaN, counted as class 0): check the dataset and its transforms")):
        strategy.eval(benchmark_from_datasets(test=[nan_images]).test_stream)


def test_one_infinite_pixel_in_a_later_test_batch_is_found():
    strategy = _trained()
    x = torch.rand(40, 3, 32, 32)
    x[37, 1, 5, 5] = float("inf")                     # the second batch of 32
    with pytest.raises(ValueError, match=r"^1 of 40 images of experience 0 of stream 'test' hold NaN or infinite"):
        strategy.eval(benchmark_from_datasets(test=[tensor_dataset(x, torch.zeros(40, dtype=torch.long))]).test_stream)


def test_nan_training_images_stop_before_the_update():
    train, _ = blob_datasets([0, 1], train_per_class=4)
    x = torch.stack([train[i][0] for i in range(len(train))])
    x[:, 0, 0, 0] = float("nan")                       # every image, one pixel: whichever the batch, it is caught
    bad = tensor_dataset(x, torch.as_tensor(train.targets))
    strategy = ConvPrompt(backbone=tiny_vit(), **TINY)
    before = {k: v.clone() for k, v in strategy.net.backbone.state_dict().items()}
    with pytest.raises(ValueError, match=r"^8 of 8 training images of experience 0, epoch 0, iteration 0 hold NaN or "
                                         r"infinite values; training stopped before the update"):
        strategy.train(benchmark_from_datasets(train=[bad]).train_stream[0])
    assert all(torch.equal(before[k], v) for k, v in strategy.net.backbone.state_dict().items())


# ------------------------------------------------------------------------------------------ experiences and labels

def test_an_empty_test_experience_is_a_clear_error():
    strategy = _trained()
    _, test = blob_datasets([0, 1])
    with pytest.raises(ValueError, match=r"^experience 0 of stream 'test' has no samples, so there is nothing to "
                                         r"evaluate; leave it out of the stream passed to eval\(\)$"):
        strategy.eval(benchmark_from_datasets(test=[test.subset([])]).test_stream)


@pytest.mark.parametrize("labels, shown", [([0.5] * 8 + [1.5] * 8, "0.5, 1.5 (float)"),
                                           ([0.0] * 8 + [1.0] * 8, "0.0, 1.0 (float)")])
def test_float_labels_are_refused_before_the_model_grows(labels, shown):
    data = tensor_dataset(torch.rand(16, 3, 32, 32), torch.tensor(labels))
    strategy = ConvPrompt(backbone=tiny_vit(), **TINY)
    message = refused(strategy, benchmark_from_datasets(train=[data]).train_stream[0])
    assert message.startswith(f"experience 0 of stream 'train': labels must be integer ids, got {shown}; convert "
                              "the dataset's targets to int"), message
    assert len(strategy.net.heads) == 0


def test_huge_class_ids_are_refused_before_anything_is_sized_by_them():
    data = tensor_dataset(torch.rand(16, 3, 32, 32), torch.tensor([0] * 8 + [10 ** 9] * 8))
    strategy = ConvPrompt(backbone=tiny_vit(), **TINY)
    message = refused(strategy, benchmark_from_datasets(train=[data]).train_stream[0])
    assert message.startswith(f"experience 0 of stream 'train': class ids [1000000000] are outside 0..{MAX_CLASS_ID}; "
                              "logits are indexed by class id, so renumber the classes 0..N-1"), message
    assert len(strategy.net.heads) == 0


def test_huge_or_float_test_labels_are_refused_at_evaluation():
    strategy = _trained()
    for labels, match in ((torch.full((4,), 10 ** 9), r"class ids \[1000000000\] are outside"),
                          (torch.full((4,), 0.5), r"labels must be integer ids, got 0\.5")):
        with pytest.raises(ValueError, match=r"^experience 0 of stream 'test': " + match):
            strategy.eval(benchmark_from_datasets(test=[tensor_dataset(torch.rand(4, 3, 32, 32), labels)]).test_stream)


def test_zero_experiences_are_refused_not_replaced_by_the_default(capsys):
    from benchmarks import run
    with pytest.raises(SystemExit):
        run.parse_args(["--experiences", "0"])
    assert "argument --experiences: must be at least 1, got 0" in capsys.readouterr().err
    for option in ("--epochs", "--batch"):
        with pytest.raises(SystemExit):
            run.parse_args([option, "-2"])
        assert f"argument {option}: must be at least 1, got -2" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"n_experiences must be a positive integer .*got 0"):
        make_stream("synthetic", n_experiences=0)


# ------------------------------------------------------------------------------------------ image folders

def test_a_truncated_jpeg_names_the_file(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "JPEG")
    _write(str(tmp_path / "n01443537" / "cut.jpg"), buf.getvalue()[:300])
    with pytest.raises(OSError, match=re.escape(f"cannot read image {tmp_path / 'n01443537' / 'cut.jpg'}: ") +
                       r"OSError: .*; replace the file or delete it"):
        ImageFiles(str(tmp_path), [("n01443537/cut.jpg", 0)])[0]


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
    root = _imagenet_r_tree(tmp_path, {"n01443537": 3, "n01484850": 3}, _image_bytes())
    with open(os.path.join(os.fsencode(root), b"imagenet-r", b"n01443537", b"caf\xe9.jpg"), "wb") as f:
        f.write(_image_bytes())
    for read in (read_imagenet_r, lambda r: read_imagenet_r_random_split(r, 0)):
        with pytest.raises(ValueError, match=r"file name b'.*/imagenet-r/n01443537/caf\\xe9\.jpg' is not valid UTF-8; "
                                             r"rename the file"):
            read(root)


def test_a_cub_metadata_file_that_is_not_utf8_is_named(tmp_path):
    root = _cub_tree(tmp_path, ["001.Black_footed_Albatross", "002.Laysan_Albatross"], [1, 0])
    path = os.path.join(root, "CUB_200_2011", "classes.txt")
    _write(path, b"1 001.Black_footed_Albatross\n2 002.Laysan_Albatros\xdf\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not valid UTF-8")):
        read_cub200(root)


def test_an_imagenet_r_tree_missing_class_folders_is_refused_naming_them(tmp_path):
    kept, missing = IMAGENET_R_WNIDS[:190], IMAGENET_R_WNIDS[190:]
    root = _imagenet_r_tree(tmp_path, {w: 2 for w in kept})
    with pytest.raises(ValueError, match=re.escape(f"10 of the 200 class folders are missing ({', '.join(missing)})")
                       + r"\. Re-extract .* or pass subset=True \(--imagenet-r-subset\)"):
        split_imagenet_r(root, img_size=32)
    _imagenet_r_tree(tmp_path, {"stray_folder": 2})
    with pytest.raises(ValueError, match=r"missing .*; 1 folder is not an ImageNet-R class \(stray_folder\)"):
        split_imagenet_r(root, img_size=32)
    stream = split_imagenet_r(root, n_experiences=1, img_size=32, subset=True)        # the explicit option
    assert len(stream.class_keys) == 191 and stream.protocol["subset"] == 191


def test_the_runner_refuses_a_partial_imagenet_r_tree_unless_asked(tmp_path):
    from benchmarks import run
    root = _imagenet_r_tree(tmp_path, {w: 2 for w in IMAGENET_R_WNIDS[:4]})
    args = ["--benchmark", "split_imagenet_r", "--data-root", root, "--strategy", "finetune", "--experiences", "2",
            "--seeds", "0", "--backbone", "offline", "--output", str(tmp_path / "out"), "--no-progress"]
    with pytest.raises(ValueError, match="196 of the 200 class folders are missing"):
        run.main(args)
    assert run.parse_args(args + ["--imagenet-r-subset"]).imagenet_r_subset


def test_corrupt_cifar_files_are_refused_and_never_downloaded(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(tv_utils, "download_url", no_download)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", no_download)
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_download)
    folder = tmp_path / "cifar-100-python"
    for name in ("train", "test", "meta"):
        _write(str(folder / name), b"\x80\x04 truncated pickle")
    with pytest.raises(ValueError, match=re.escape(
            f"CIFAR-100 files {folder / 'train'}, {folder / 'test'}, {folder / 'meta'} do not match the published MD5 "
            f"checksum (truncated or corrupt); nothing is downloaded: delete {folder}")):
        split_cifar100(str(tmp_path))


# ------------------------------------------------------------------------------------------ descriptor files

def test_a_duplicate_class_key_in_a_descriptor_file_is_refused(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"classes": {"apple": {"descriptors": ["red"]}, "pear": {"descriptors": ["green"]}, '
                    '"apple": {"descriptors": ["green"]}}}')
    with pytest.raises(ValueError, match=re.escape(f"{path}: key 'apple' appears twice in one object")):
        load_descriptors(path)


def test_a_descriptor_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"classes": {"caf\u00e9": {"descriptors": ["brown"]}}}'.encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{path}: not UTF-8 text (invalid continuation byte at byte 17, "
                                                   "line 1); save the file as UTF-8")):
        load_descriptors(path)


# ------------------------------------------------------------------------------------------ the LLM endpoint

class MisbehavingServer:
    """A raw HTTP server on 127.0.0.1 that reads a request, then answers badly, one byte every ``pause`` s.

    ``mode``: ``"length"`` (``Content-Length: 1000``, then the body byte by byte), ``"chunked"`` (an
    endless chunked body) or ``"headers"`` (a status line, then header bytes forever). ``sent[i]`` counts
    the trickled bytes of connection ``i``, which ends when the client hangs up.
    """

    def __init__(self, mode, pause=0.05):
        self.mode, self.pause, self.sent = mode, pause, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.sent.append(0)
            threading.Thread(target=self._answer, args=(conn, len(self.sent) - 1), daemon=True).start()

    def _answer(self, conn, index):
        head, trickle = {
            "length": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n", b" "),
            "chunked": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                        b"1\r\n \r\n"),
            "headers": (b"HTTP/1.1 200 OK\r\n", b"X"),
        }[self.mode]
        with conn:
            conn.settimeout(30)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(head)
                while self.sent[index] < 1000:
                    threading.Event().wait(self.pause)
                    conn.sendall(trickle)
                    self.sent[index] += 1
            except OSError:           # the client hung up
                pass

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("mode", ["length", "chunked", "headers"])
def test_a_trickling_or_endless_answer_ends_at_the_timeout(mode):
    server = MisbehavingServer(mode)
    try:
        with pytest.raises(EndpointError) as info:
            finished_within(30, chat_completion, server.base_url, "m", [{"role": "user", "content": "x"}],
                            timeout=0.5)
    finally:
        server.close()
    assert str(info.value) == (f"no answer from {server.base_url}/chat/completions within the 0.5 s timeout (one "
                               "deadline for the connection, the headers and the whole body)")
    assert info.value.retryable
    assert server.sent[0] < 1000                      # the client hung up long before the server was done


def test_the_cli_gives_up_after_its_retries_with_one_line(tmp_path, capsys):
    server = MisbehavingServer("length")
    try:
        status = finished_within(30, generate_main, ["--classes", "apple", "--output", str(tmp_path / "o.json"),
                                                     "--base-url", server.base_url, "--model", "m", "--timeout",
                                                     "0.5", "--retries", "1", "--backoff", "0", "--quiet"])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert status == 2 and len(server.sent) == 2 and err.count("\n") == 1
    assert "gave up after 2 attempts: no answer from" in err and "within the 0.5 s timeout" in err
    assert not (tmp_path / "o.json").exists()


# ------------------------------------------------------------------------------------------ adversarial answers

def test_a_bullet_with_200k_spaces_parses_at_once_and_correctly():
    answer = "- a" + " " * 200_000 + "b\n- c\n*   d   \n1. e\n(b) f"
    assert finished_within(30, parse_descriptors, answer) == ["a b", "c", "d", "e", "f"]


@pytest.mark.parametrize("answer", ["[" * 100_000, '["[", ' * 20_000, "{" * 50_000 + "[" * 50_000],
                         ids=["nested-lists", "nested-strings", "nested-mixed"])
def test_deeply_nested_json_is_an_unusable_answer_not_a_crash(answer):
    with pytest.raises(UnusableAnswerError, match="answer has 0 usable descriptors"):
        finished_within(30, parse_descriptors, answer)


def test_a_list_after_many_fruitless_brackets_in_its_own_fence_is_still_found():
    answer = "numbers: " + " ".join("[1]" for _ in range(40)) + "\n```json\n" + json.dumps(
        ["red skin", "round", "short stem", "shiny", "in a bowl"]) + "\n```"
    assert parse_descriptors(answer) == ["red skin", "round", "short stem", "shiny", "in a bowl"]
