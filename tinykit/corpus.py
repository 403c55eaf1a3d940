"""Built-in text for the tiny kit: the tokenizer's training corpus and the words user messages are made of."""

from __future__ import annotations

SENTENCES: tuple[str, ...] = (
    "Hello, how are you today?",
    "What is the capital of France?",
    "Tell me a short story about a dragon.",
    "Can you explain how a rainbow forms?",
    "Write a poem about the sea.",
    "What time is it in Tokyo?",
    "Please summarize this article for me.",
    "How do I bake a loaf of bread?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Give me three ideas for a birthday party.",
    "What is two plus two?",
    "Describe your favourite colour.",
    "Recommend a good book to read.",
    "How many legs does a spider have?",
    "The quick brown fox jumps over the lazy dog.",
    "Serverless functions start on demand and scale to zero when idle.",
    "A container app runs the inference server on a GPU workload profile.",
    "Adapters are small low-rank matrices added to attention projections.",
    "The orchestrator rolls out the newest adapter, one rollout at a time.",
    "You are a helpful assistant. Answer briefly and kindly.",
    "Café, naïve, jalapeño, 東京, Zürich and emoji like 🙂 are text too.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14",
    "alpha says hello",
    "beta says goodbye",
    "gamma says thanks",
)

WORDS: tuple[str, ...] = tuple(
    sorted(
        {
            word.strip(".,?!'")
            for sentence in SENTENCES[:21]
            for word in sentence.split()
            if word.strip(".,?!'")
        }
    )
)

#: The tokenizer trains on these lines (repeated so frequent words become single tokens).
CORPUS: tuple[str, ...] = SENTENCES * 4
