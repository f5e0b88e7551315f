"""Words in dino.txt's space: the CLIP BPE tokenizer, text queries and text-prompted heatmaps."""

from engine.text.tokenizer import Tokenizer, VocabularyError

__all__ = ["Tokenizer", "VocabularyError"]
