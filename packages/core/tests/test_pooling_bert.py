"""BERT encoders match sentence-transformers and HF transformers on the same weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from mono_llm.core.config import EngineArgs
from mono_llm.core.layers.attention import AttentionMetadata
from mono_llm.core.models.bert import EncoderAttentionMetadata
from mono_llm.core.models.loader import build_model
from mono_llm.core.pooling.pooler import build_pooling_head, finalize_pooled
from mono_llm.core.pooling.tasks import resolve_model_tasks
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.core.testing import fixture_path, minilm_path

TEXTS = [
    "Hello, how are you?",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "A",
]
PAIRS = [
    ("what is the capital of France?", "Paris is the capital of France."),
    ("hello", "the quick brown fox"),
    ("a b c", "x"),
]


def _load(path, dtype: str = "float32"):
    config = EngineArgs(model=str(path), dtype=dtype, device="cpu").create_engine_config()
    model_config = config.model_config
    tasks = resolve_model_tasks(
        model_config.task, model_config.architectures, path, model_config.hf_config
    )
    model = build_model(model_config, torch.device("cpu"))
    return model, build_pooling_head(model, tasks, "cpu", model_config.dtype), tasks


def _encode(path, encodings, params: PoolingParams, dtype: str = "float32"):
    """Run our encoder on a ragged batch of tokenizer outputs; return finalized rows."""
    model, head, tasks = _load(path, dtype)
    ids = torch.tensor([i for e in encodings for i in e["input_ids"]])
    token_types = torch.tensor([i for e in encodings for i in e["token_type_ids"]])
    lens = [len(e["input_ids"]) for e in encodings]
    positions = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        hidden = model(ids, positions, lens, token_types)
        pooled = head(hidden, lens)
    return torch.stack([finalize_pooled(row, params, tasks) for row in pooled])


@pytest.mark.parametrize("which", ["minilm", "tiny-bert"])
def test_embeddings_match_sentence_transformers(which):
    from sentence_transformers import SentenceTransformer

    path = minilm_path() if which == "minilm" else fixture_path("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ours = _encode(path, [tokenizer(t) for t in TEXTS], PoolingParams(task="embed"))
    reference = torch.tensor(SentenceTransformer(str(path), device="cpu").encode(TEXTS))
    cosine = torch.nn.functional.cosine_similarity(ours, reference)
    assert cosine.min().item() >= 0.9999
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    # Normalized, and different texts give clearly different vectors.
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(TEXTS)))
    assert (ours[0] @ ours[1]).item() < 0.99


@pytest.mark.parametrize("name", ["tiny-bert-classifier", "tiny-bert-cross-encoder"])
def test_classifier_logits_match_transformers(name):
    path = fixture_path(name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ours = _encode(path, [tokenizer(a, b) for a, b in PAIRS], PoolingParams(task="encode"))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    batch = tokenizer(
        [a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        reference = hf(**batch).logits
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    # classify applies softmax (3 labels) or sigmoid (one label, a cross-encoder).
    probs = _encode(path, [tokenizer(a, b) for a, b in PAIRS], PoolingParams(task="classify"))
    expected = reference.sigmoid() if reference.shape[1] == 1 else reference.softmax(-1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)


def test_token_types_change_the_cross_encoder_score():
    path = fixture_path("tiny-bert-cross-encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    pair = tokenizer(*PAIRS[0])
    flat = dict(pair, token_type_ids=[0] * len(pair["input_ids"]))
    scores = _encode(path, [pair, flat], PoolingParams(task="encode"))
    assert abs(scores[0, 0].item() - scores[1, 0].item()) > 1e-4


def test_attention_metadata_maps_ragged_tokens_to_padded_rows():
    meta = EncoderAttentionMetadata.build([2, 3, 1], torch.device("cpu"))
    assert meta.max_len == 3
    assert meta.padded_index.tolist() == [0, 1, 3, 4, 5, 6]
    assert meta.key_mask is not None
    assert meta.key_mask[:, 0, 0].tolist() == [
        [True, True, False],
        [True, True, True],
        [True, False, False],
    ]
    assert EncoderAttentionMetadata.build([4, 4], torch.device("cpu")).key_mask is None


def test_batching_does_not_change_a_sequence_embedding():
    path = fixture_path("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    alone = _encode(path, [tokenizer(TEXTS[1])], PoolingParams())
    batched = _encode(path, [tokenizer(t) for t in TEXTS], PoolingParams())
    torch.testing.assert_close(alone[0], batched[1], atol=1e-6, rtol=1e-5)


def test_engine_step_metadata_gives_the_same_hidden_states():
    """Inside an engine step the encoder reads sequence boundaries from AttentionMetadata."""
    model, _, _ = _load(fixture_path("tiny-bert"))
    lens = [5, 2, 7]
    ids = torch.randint(5, 200, (sum(lens),))
    positions = torch.cat([torch.arange(n) for n in lens])
    qsl = torch.tensor([0, 5, 7, 14], dtype=torch.int32)
    step = AttentionMetadata(
        slot_mapping=torch.full((14,), -1),
        block_tables=torch.zeros((3, 1), dtype=torch.int32),
        query_start_loc=qsl,
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        max_query_len=7,
        max_seq_len=7,
        causal=False,
    )
    with torch.no_grad():
        explicit = model(ids, positions, lens)
        with model.forward_context.use(step):
            from_step = model(ids, positions)
    torch.testing.assert_close(from_step, explicit)


def test_bf16_embeddings_stay_close():
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    encodings = [tokenizer(t) for t in TEXTS]
    fp32 = _encode(path, encodings, PoolingParams())
    bf16 = _encode(path, encodings, PoolingParams(), dtype="bfloat16")
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min().item() > 0.99


def test_decoder_classifier_matches_transformers():
    """Qwen2ForSequenceClassification: the Llama-family body + score head on the last token."""
    path = fixture_path("tiny-qwen2-classifier")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    _, _, tasks = _load(path)
    assert tasks.runner == "classify" and not tasks.is_encoder
    assert tasks.id2label == {0: "bad", 1: "good"}
    texts = ["The quick brown fox", "Hello! How are you today? I am fine."]
    encodings = [tokenizer(t).input_ids for t in texts]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    lens = [len(e) for e in encodings]
    reference = []
    with torch.no_grad():
        for ids in encodings:
            reference.append(hf(torch.tensor([ids])).logits[0])
        # The decoder body uses the paged KV cache: run it as one engine step through the runner.
        from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
        from mono_llm.core.worker.model_runner import ModelRunner

        config = EngineArgs(model=str(path), device="cpu", kv_cache_memory_gib=0.01)
        runner = ModelRunner(config.create_engine_config())
        slices, next_block = [], 0
        for ids in encodings:
            blocks = -(-len(ids) // 16)
            table = list(range(next_block, next_block + blocks))
            next_block += blocks
            slices.append(SequenceSlice(ids, 0, table, LogitsWanted.LAST))
        hidden = runner.execute_hidden(ModelBatch(slices))
        head = build_pooling_head(runner.model, tasks, "cpu", torch.float32)
        logits = head(hidden, lens)
    torch.testing.assert_close(logits, torch.stack(reference), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["XLMRobertaForSequenceClassification", "RobertaModel"])
def test_roberta_variants_match_transformers(tmp_path, arch):
    """RoBERTa numbers positions from padding_idx + 1 and has its own classifier head."""
    import shutil

    torch.manual_seed(0)
    kind = "xlm-roberta" if arch.startswith("XLM") else "roberta"
    config_cls = (
        transformers.XLMRobertaConfig if kind == "xlm-roberta" else transformers.RobertaConfig
    )
    config = config_cls(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=66,
        type_vocab_size=1,
        pad_token_id=1,
        num_labels=2,
        initializer_range=0.2,
    )
    config.architectures = [arch]
    hf = getattr(transformers, arch)(config).eval()
    hf.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(fixture_path("tiny-bert") / name, tmp_path / name)
    lens = [9, 5]
    sequences = [torch.randint(3, 300, (n,)) for n in lens]
    model, head, tasks = _load(tmp_path)
    ids = torch.cat(sequences)
    positions = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        hidden = model(ids, positions, lens)
        ours = head(hidden, lens)
        for row, seq in zip(ours, sequences, strict=True):
            out = hf(seq.unsqueeze(0))
            if tasks.runner == "classify":
                torch.testing.assert_close(row, out.logits[0], atol=1e-5, rtol=1e-4)
            else:  # no sentence-transformers files: CLS pooling, as vLLM's default
                torch.testing.assert_close(row, out.last_hidden_state[0, 0], atol=1e-5, rtol=1e-4)
    assert model.max_positions == 64  # two rows of the table sit below the first position


def test_bare_decoder_checkpoint_embeds_its_last_token(tmp_path):
    """A Qwen2Model checkpoint (no LM head, no `model.` prefix) serves last-token embeddings."""
    import shutil

    from mono_llm.core import LLM

    source = fixture_path("tiny-qwen2")
    body = transformers.AutoModel.from_pretrained(source).eval()
    body.config.architectures = ["Qwen2Model"]
    body.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, tmp_path / name)
    llm = LLM(str(tmp_path))
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    text = "The quick brown fox jumps over the lazy dog."
    out = llm.embed(text)[0].outputs.embedding
    with torch.no_grad():
        hidden = body(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, -1]
    expected = torch.nn.functional.normalize(hidden, dim=0)
    assert out == pytest.approx(expected.tolist(), abs=1e-4)
