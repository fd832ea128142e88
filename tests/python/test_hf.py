"""Hugging Face models (ray_zerocopy/_hf.py): real transformers
architectures at tiny sizes, saved by save_pretrained in shards, preloaded
as directories (the CLI, preload_pretrained, a Hub cache snapshot) and
loaded with from_pretrained against transformers' own from_pretrained on
the same directory."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import transformers  # pinned in requirements.txt

import ray_zerocopy
from ray_zerocopy import InvalidModelError, ModelNotFoundError

from test_ray import processes_ready, segment_pss

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello zerocopy", "weights shared by all"]


def bpe_tokenizer(directory: Path):
    """A byte-level BPE tokenizer trained here (no Hub), saved beside the model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(directory)


def bert_tokenizer(directory: Path):
    words = sorted({w.strip(",") for t in TEXT for w in t.split()} | {","})
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizer(vocab_file=str(vocab)).save_pretrained(directory)


def make(root: Path, kind: str) -> Path:
    """A tiny model of `kind`, saved sharded with its tokenizer."""
    torch.manual_seed(0)
    d = root / kind
    if kind == "llama":  # rotary buffers (inv_freq), not in the checkpoint
        cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(cfg)
    elif kind == "gpt2":  # lm_head tied to the embeddings: not in the checkpoint
        cfg = transformers.GPT2Config(vocab_size=300, n_positions=128, n_embd=64, n_layer=2, n_head=4)
        model = transformers.GPT2LMHeadModel(cfg)
    elif kind == "bert":
        cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=64, num_labels=3)
        model = transformers.BertForSequenceClassification(cfg)
    elif kind == "qwen2-bf16":
        cfg = transformers.Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    else:
        raise ValueError(kind)
    model.save_pretrained(d, max_shard_size="100KB")
    (bert_tokenizer if kind == "bert" else bpe_tokenizer)(d)
    assert len(list(d.glob("*.safetensors"))) > 1  # sharded, with an index
    return d


KINDS = ["llama", "gpt2", "bert", "qwen2-bf16"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, daemon):
    root = tmp_path_factory.mktemp("hf")
    out = {kind: make(root, kind) for kind in KINDS}
    for kind, d in out.items():
        if kind == "gpt2":
            ray_zerocopy.preload_pretrained(str(d), name=f"hf-{kind}")  # from Python
        else:
            p = daemon.run_cli("preload", str(d), "--name", f"hf-{kind}")  # the CLI
            assert p.returncode == 0, p.stderr
            assert "files" in p.stderr, p.stderr
    return out


def segment_ranges(digest: str) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith(f"{digest}.seg"):
                lo, hi = line.split()[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def _not_built(*args, **kwargs):
    raise AssertionError("the model was built, not unpickled from its skeleton")


def _not_pickled(*args, **kwargs):
    raise AssertionError("a build the cache refused once was pickled again")


@pytest.mark.parametrize("kind", KINDS)
def test_from_pretrained_equals_transformers_and_maps_every_weight(saved, kind, monkeypatch, tmp_path):
    d = saved[kind]
    cache = tmp_path / "skeletons"
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(cache))
    built = ray_zerocopy.from_pretrained(f"hf-{kind}")  # by transformers; its skeleton kept
    assert len(list(cache.glob("*/*.pkl"))) == 1
    with monkeypatch.context() as m:  # the next one: the skeleton unpickled over the mapping
        m.setattr(ray_zerocopy._hf, "_files_on_disk", _not_built)
        unpickled = ray_zerocopy.from_pretrained(f"hf-{kind}")
    theirs = transformers.AutoConfig.from_pretrained(d).architectures[0]
    theirs = getattr(transformers, theirs).from_pretrained(d)
    digest = ray_zerocopy._native.client().get(f"hf-{kind}")["digest"]
    ranges = segment_ranges(digest)
    assert ranges
    tok = ray_zerocopy.tokenizer(f"hf-{kind}")
    ref_tok = transformers.AutoTokenizer.from_pretrained(d)
    for text in TEXT:
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    batch = ref_tok(TEXT[:2], return_tensors="pt", padding=True) if kind == "bert" else ref_tok(TEXT[0],
                                                                                               return_tensors="pt")
    for ours in (built, unpickled):
        assert type(ours) is type(theirs)
        assert not ours.training and not any(p.requires_grad for p in ours.parameters())
        assert ours.dtype == theirs.dtype == (torch.bfloat16 if "bf16" in kind else torch.float32)
        # Every parameter is a view of the model's segment, not a copy.
        for name, p in ours.named_parameters():
            assert any(lo <= p.data_ptr() < hi for lo, hi in ranges), name
        # Ties and computed buffers as transformers makes them.
        if kind in ("gpt2", "qwen2-bf16"):
            assert ours.lm_head.weight.data_ptr() == ours.get_input_embeddings().weight.data_ptr()
            assert ours.lm_head.weight is ours.get_input_embeddings().weight
        for (name, b), (_, c) in zip(ours.named_buffers(), theirs.named_buffers(), strict=True):
            assert torch.equal(b, c), name
        assert ours.name_or_path == ours.config.name_or_path == f"hf-{kind}"
        assert ours.config.to_dict() == dict(theirs.config.to_dict(), _name_or_path=f"hf-{kind}")
        if kind != "bert":
            assert ours.generation_config.to_dict() == theirs.generation_config.to_dict()
        with torch.no_grad():
            assert torch.equal(ours(**batch).logits, theirs(**batch).logits)
            # What transformers records with hooks of its own: the same.
            a, b = (m(**batch, output_hidden_states=True, output_attentions=True) for m in (ours, theirs))
            assert len(a.hidden_states) == len(b.hidden_states) and len(a.attentions) == len(b.attentions)
            assert all(torch.equal(x, y) for x, y in zip(a.hidden_states + a.attentions,
                                                         b.hidden_states + b.attentions))
        if kind != "bert":
            kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=ref_tok.eos_token_id)
            assert torch.equal(ours.generate(**batch, **kw), theirs.generate(**batch, **kw))


def test_a_skeleton_is_read_only_when_it_is_this_users_own_and_whole(saved, monkeypatch, tmp_path):
    cache = tmp_path / "skeletons"
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(cache))
    monkeypatch.setattr(ray_zerocopy._cache, "_warned", False)
    builds = []
    files_on_disk = ray_zerocopy._hf._files_on_disk
    monkeypatch.setattr(ray_zerocopy._hf, "_files_on_disk", lambda *a: builds.append(1) or files_on_disk(*a))
    expected = ray_zerocopy.from_pretrained("hf-llama")
    ids = torch.tensor([[1, 2, 3, 4]])

    def loads_right():
        with torch.no_grad():
            return torch.equal(ray_zerocopy.from_pretrained("hf-llama")(ids).logits, expected(ids).logits)

    [skeleton] = cache.glob("*/*.pkl")
    whole = skeleton.read_bytes()
    assert builds == [1] and oct(cache.stat().st_mode & 0o777) == "0o700"
    assert loads_right() and builds == [1]  # unpickled
    # By digest: the same skeleton, named as asked.
    digest = ray_zerocopy._native.client().get("hf-llama")["digest"]
    assert ray_zerocopy.from_pretrained(digest).name_or_path == digest and builds == [1]
    # Writable by others: not read (one warning), built again.
    skeleton.chmod(0o666)
    with pytest.warns(RuntimeWarning, match="others may write it") as warned:
        assert loads_right()
    assert [w.filename for w in warned] == [__file__]  # the caller's line, not ours
    assert builds == [1, 1]
    skeleton.chmod(0o600)
    # In a directory others may write: the same.
    monkeypatch.setattr(ray_zerocopy._cache, "_warned", False)
    skeleton.parent.chmod(0o777)
    with pytest.warns(RuntimeWarning, match="no skeleton in it is read"):
        assert loads_right()
    assert builds == [1, 1, 1]
    skeleton.parent.chmod(0o700)
    # Cut short (a writer that died): removed, built again, kept whole again.
    skeleton.write_bytes(whole[:len(whole) // 2])
    assert loads_right() and builds == [1, 1, 1, 1]
    assert skeleton.read_bytes() == whole
    assert loads_right() and builds == [1, 1, 1, 1]
    # Another transformers: another skeleton, built.
    monkeypatch.setattr(sys.modules["transformers"], "__version__", transformers.__version__ + ".other")
    assert loads_right() and builds == [1] * 5 and len(list(cache.glob("*/*.pkl"))) == 2
    # Another dtype copies the weights: built each time, nothing kept.
    for _ in range(2):
        with torch.no_grad():
            ray_zerocopy.from_pretrained("hf-llama", dtype=torch.bfloat16)(ids)
    assert builds == [1] * 7 and len(list(cache.glob("*/*.pkl"))) == 2
    # Read: marked used (once a day at most). Unread for 30 days: removed
    # when another skeleton is written, with a writer's leftover.
    [ours] = [f for f in cache.glob("*/*.pkl") if f != skeleton]
    day = 86400
    os.utime(ours, (time.time() - 2 * day,) * 2)
    assert loads_right() and builds == [1] * 7 and ours.stat().st_mtime > time.time() - day
    stale = cache / ("0" * 32)
    stale.mkdir(mode=0o700)
    for name in ("old.pkl", ".tmp.abc"):
        (stale / name).write_bytes(b"x")
        os.utime(stale / name, (time.time() - 31 * day,) * 2)
    os.utime(skeleton, (time.time() - 31 * day,) * 2)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", transformers.__version__ + ".third")
    assert loads_right() and builds == [1] * 8
    assert not stale.exists() and not skeleton.exists() and ours.exists()
    assert len(list(cache.glob("*/*.pkl"))) == 2
    # A model whose own tensors (here its rotary buffers) exceed the limit: not kept.
    shutil.rmtree(cache)
    monkeypatch.setattr(ray_zerocopy._cache, "MAX_OWN_BYTES", 16)
    assert loads_right() and not list(cache.glob("*/*.pkl")) and len(list(cache.glob("*/*.none"))) == 1
    # ... nor tried again by the next build.
    monkeypatch.setattr(ray_zerocopy._store, "skeleton_pickler", _not_pickled)
    assert loads_right() and builds == [1] * 10 and not list(cache.glob("*/*.pkl"))


def test_a_model_class_an_auto_class_and_another_dtype(saved):
    model = ray_zerocopy.from_pretrained("hf-llama", model_class=transformers.AutoModelForCausalLM)
    assert type(model) is transformers.LlamaForCausalLM
    base = ray_zerocopy.from_pretrained("hf-llama", model_class=transformers.LlamaModel)
    assert type(base) is transformers.LlamaModel
    half = ray_zerocopy.from_pretrained("hf-llama", dtype=torch.bfloat16)  # a conversion: copies
    assert half.dtype == torch.bfloat16
    ranges = segment_ranges(ray_zerocopy._native.client().get("hf-llama")["digest"])
    assert ranges and not any(lo <= p.data_ptr() < hi for p in half.parameters() for lo, hi in ranges)


def test_inspect_shows_the_files_and_the_config(saved, daemon):
    p = daemon.run_cli("inspect", "hf-llama")
    assert p.returncode == 0, p.stderr
    assert "config.json" in p.stdout and "tokenizer.json" in p.stdout and "generation_config.json" in p.stdout
    assert "LlamaForCausalLM (model_type llama, dtype float32)" in p.stdout, p.stdout
    assert not any(".safetensors" in line for line in p.stdout.splitlines() if line.startswith("files:"))


def test_four_processes_share_one_copy(saved, daemon):
    digest = ray_zerocopy._native.client().get("hf-llama")["digest"]
    size = ray_zerocopy._native.client().get("hf-llama")["size"]
    code = textwrap.dedent("""
        import sys, torch, ray_zerocopy
        m = ray_zerocopy.from_pretrained("hf-llama")
        with torch.no_grad():
            m(torch.tensor([[1, 2, 3]]))
        for p in m.parameters():
            p.sum()  # every page of the weights touched
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    with processes_ready(code) as procs:
        pss = [segment_pss(p.pid, digest) for p in procs]
        assert all(rss > 0.9 * size for rss, _ in pss), (pss, size)  # each maps the whole model
        assert sum(p for _, p in pss) <= 1.1 * size, (pss, size)  # one copy between them


def test_errors_name_what_is_wrong_and_nothing_is_returned(saved, daemon, tmp_path):
    # A directory without weights.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    p = daemon.run_cli("preload", str(tmp_path / "empty"))
    assert p.returncode != 0 and "safetensors" in p.stderr, p.stderr
    # Weights without a config.
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in saved["llama"].glob("*.safetensors*"):
        shutil.copy(f, bare)
    ray_zerocopy.preload_pretrained(str(bare), name="hf-bare")
    with pytest.raises(InvalidModelError, match="keeps no config.json"):
        ray_zerocopy.from_pretrained("hf-bare")
    # An architecture transformers does not have, a model type it cannot
    # read, tensors that do not match the class (another layer count, other
    # shapes): the llama's directory with one change to its config.
    shapes = r"shapes differ.*embed_tokens\.weight \(300, 64\) vs \(301, 64\)"
    for name, change, match in [("hf-noarch", {"architectures": ["NoSuchForCausalLM"]}, "NoSuchForCausalLM"),
                                ("hf-notype", {"model_type": "no-such-type"}, "cannot read the config"),
                                ("hf-layers", {"num_hidden_layers": 3}, r"lacks: model\.layers\.2\."),
                                ("hf-shapes", {"vocab_size": 301}, shapes)]:
        d = tmp_path / name
        shutil.copytree(saved["llama"], d)
        config = json.loads((d / "config.json").read_text())
        config.update(change)
        (d / "config.json").write_text(json.dumps(config))
        ray_zerocopy.preload_pretrained(str(d), name=name)
        with pytest.raises(InvalidModelError, match=match):
            ray_zerocopy.from_pretrained(name)
    # Small files over the limit: refused at preload, naming the largest.
    big = tmp_path / "big"
    shutil.copytree(saved["llama"], big)
    with open(big / "tokenizer.big", "wb") as f:
        f.truncate(65 << 20)
    p = daemon.run_cli("preload", str(big))
    assert p.returncode != 0 and "tokenizer.big" in p.stderr and "64 MiB" in p.stderr, p.stderr
    with pytest.raises(ModelNotFoundError):
        ray_zerocopy.from_pretrained("hf-no-such-model")


def test_a_hub_id_from_the_hugging_face_cache(saved, tmp_path):
    """preload_pretrained('org/name') finds a snapshot in the cache (offline),
    whose files link into blobs/, and names it org--name."""
    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for i, f in enumerate(sorted(saved["llama"].iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    code = textwrap.dedent("""
        import torch, ray_zerocopy
        info = ray_zerocopy.preload_pretrained("tiny-org/tiny-llama")
        m = ray_zerocopy.from_pretrained("tiny-org/tiny-llama")
        names = ray_zerocopy._native.client().get("tiny-org--tiny-llama")["names"]
        ids = ray_zerocopy.tokenizer("tiny-org/tiny-llama")("hello world")["input_ids"]
        print(type(m).__name__, "tiny-org--tiny-llama" in names, len(ids) > 0)
    """)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["LlamaForCausalLM", "True", "True"], p.stdout
    env["HF_HUB_OFFLINE"] = "1"
    p = subprocess.run([sys.executable, "-c", "import ray_zerocopy; ray_zerocopy.preload_pretrained('no-org/none')"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode != 0 and "ModelNotFoundError" in p.stderr and "Hugging Face cache" in p.stderr, p.stderr


def test_a_transformers_model_goes_through_the_seeds_wrappers(saved, ray_local):
    from ray_zerocopy import ActorWrapper, TaskWrapper
    model = transformers.AutoModelForCausalLM.from_pretrained(saved["gpt2"]).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = model(ids).logits

    @ray_local.remote
    class Actor:
        def __init__(self, wrapper):
            self.model = wrapper.load()

        def logits(self, ids):
            with torch.no_grad():
                return self.model(ids).logits

    actor = Actor.remote(ActorWrapper(model))
    torch.testing.assert_close(ray_local.get(actor.logits.remote(ids)), want, rtol=1e-5, atol=1e-6)
    task = TaskWrapper(model)
    torch.testing.assert_close(task(ids).logits, want, rtol=1e-5, atol=1e-6)


class Classify:
    """README "Hugging Face models": the Ray Data example's actor."""

    def __init__(self):
        self.tokenizer = ray_zerocopy.tokenizer("hf-bert")
        self.model = ray_zerocopy.from_pretrained("hf-bert")

    def __call__(self, batch):
        inputs = self.tokenizer(list(batch["text"]), return_tensors="pt", padding=True)
        with torch.no_grad():
            batch["label"] = self.model(**inputs).logits.argmax(-1).numpy()
        return batch


def test_the_readmes_ray_data_pool_classifies_with_the_shared_model(saved, ray_local):
    from ray.data import ActorPoolStrategy
    texts = [f"{a} {b}" for a in TEXT for b in TEXT]
    ds = ray_local.data.from_items([{"text": t} for t in texts]).map_batches(
        Classify, batch_size=4, compute=ActorPoolStrategy(size=2))
    got = {r["text"]: int(r["label"]) for r in ds.take_all()}
    tokenizer = transformers.AutoTokenizer.from_pretrained(saved["bert"])
    model = transformers.BertForSequenceClassification.from_pretrained(saved["bert"]).eval()
    with torch.no_grad():
        want = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    assert got == dict(zip(texts, want))


class Classifier:
    """README "Hugging Face models": the Ray Serve deployment's class."""

    def __init__(self):
        self.tokenizer = ray_zerocopy.tokenizer("hf-bert")
        self.model = ray_zerocopy.from_pretrained("hf-bert")

    def __call__(self, texts: list) -> list:
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            return self.model(**inputs).logits.argmax(-1).tolist()

    def pid(self) -> int:
        time.sleep(0.1)  # calls made at once then overlap: Serve spreads them (at most 5 at a replica)
        return os.getpid()


def test_the_readmes_serve_deployment_replicas_share_one_copy(saved, ray_local):
    """Two Serve replicas on this node: the same labels as transformers'
    own model, and between them one copy of the weights (the segment's
    PSS summed over the replicas' processes)."""
    from ray import serve
    serve.start(proxy_location="Disabled")  # handles only: no HTTP listener
    try:
        app = serve.deployment(Classifier, num_replicas=2, ray_actor_options={"num_cpus": 0.5}).bind()
        handle = serve.run(app, name="hf-serve", route_prefix=None)
        tokenizer = transformers.AutoTokenizer.from_pretrained(saved["bert"])
        model = transformers.BertForSequenceClassification.from_pretrained(saved["bert"]).eval()
        with torch.no_grad():
            want = model(**tokenizer(TEXT, return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
        # Enough calls that both replicas answer (and touch every weight).
        answers = [handle.remote(TEXT) for _ in range(12)]
        assert all(a.result(timeout_s=120) == want for a in answers)
        pids = {r.result(timeout_s=60) for r in [handle.pid.remote() for _ in range(24)]}
        assert len(pids) == 2, pids
        info = ray_zerocopy._native.client().get("hf-bert")
        pss = [segment_pss(pid, info["digest"]) for pid in pids]
        assert all(rss > 0 for rss, _ in pss), pss  # each maps the model
        assert sum(p for _, p in pss) <= 1.1 * info["size"], (pss, info["size"])
    finally:
        serve.shutdown()
