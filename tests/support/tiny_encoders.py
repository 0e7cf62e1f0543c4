"""Tiny random-weight encoders with two real fast tokenizers, for tests about words and spans.

The bundled BERT WordPiece (uncased, splits punctuation itself) and a SentencePiece-style Unigram
tokenizer built here with the ``tokenizers`` library, whose pieces start with the space before a
word and may glue punctuation onto it (``▁Paris,``), on a tiny random-weight XLM-R.
"""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForTokenClassification,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForTokenClassification,
)

from shared.core.config import bundled_base_model

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
LABEL2ID = {label: i for i, label in enumerate(LABELS)}

# CoNLL-style sentences with the cases the issue names: list numbers, hyphenated and apostrophe
# names, all-caps datelines, a name split over an I- tag after O (IOB1 leftovers), accents.
SENTENCES: list[tuple[list[str], list[str]]] = [
    (["1.", "Jesper", "Ronnback", "(", "Sweden", ")", "25.76", "points"],
     ["O", "B-PER", "I-PER", "O", "B-LOC", "O", "O", "O"]),
    (["Jeremie", "Collomb-Patton", "and", "Nihad", "al-Boushi", "scored", "."],
     ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "O"]),
    (["AL-AIN", ",", "United", "Arab", "Emirates", "1996-12-06"],
     ["B-LOC", "O", "B-LOC", "I-LOC", "I-LOC", "O"]),
    (["Shaun", "O'Neill", "of", "Man.", "United", "met", "Zürich", "'s", "José", "Müller-Lüdenscheidt"],
     ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "O", "B-LOC", "O", "B-PER", "I-PER"]),
    (["SOCCER", "-", "JAPAN", "GET", "LUCKY", "WIN", ",", "CHINA", "IN", "SURPRISE", "DEFEAT", "."],
     ["O", "O", "B-LOC", "O", "O", "O", "O", "B-PER", "O", "O", "O", "O"]),
    (["U.S.", "Treasury", "balances", "at", "Fed", "fell", "on", "Friday", "to", "$", "3.5", "billion"],
     ["B-ORG", "I-ORG", "O", "O", "B-ORG", "O", "O", "O", "O", "O", "O", "O"]),
]  # fmt: skip


def bert_wordpiece(*, layers: int = 1) -> tuple[PreTrainedTokenizerFast, torch.nn.Module]:
    tokenizer = AutoTokenizer.from_pretrained(bundled_base_model())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id=LABEL2ID,
    )  # fmt: skip
    return tokenizer, BertForTokenClassification(config)


def xlmr_unigram(*, layers: int = 1) -> tuple[PreTrainedTokenizerFast, torch.nn.Module]:
    """A Unigram tokenizer with an explicit vocabulary: whole words with their leading ``▁``, glued pieces."""
    text = " ".join(" ".join(tokens) for tokens, _ in SENTENCES) + " Paris, France"
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = sorted(set(text.replace(" ", "")))
    whole = sorted({"▁" + word for word in text.split()})
    glued = ["▁Paris,", "▁D'", "Arcy", "▁LONDON", "▁1.", "-12-", "▁AL-"]
    vocab = [(piece, 0.0) for piece in specials] + [
        (piece, -1.0) for piece in dict.fromkeys(["▁", *chars, *whole, *glued])
    ]
    backend = Tokenizer(models.Unigram(vocab, unk_id=3))
    # As SentencePiece's normalizer: every kind of space is a plain space (offsets still map back).
    backend.normalizer = normalizers.Replace(Regex(r"\s"), " ")
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>",
    )  # fmt: skip
    config = XLMRobertaConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id=LABEL2ID,
    )  # fmt: skip
    return tokenizer, XLMRobertaForTokenClassification(config)
