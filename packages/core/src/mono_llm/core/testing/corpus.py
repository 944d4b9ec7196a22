"""A small, original training text for the fixture tokenizers.

It mixes prose, code, numbers, chat-like turns and non-ASCII text so that the trained
byte-level BPE has multi-byte merges (for UTF-8 detokenization tests) and common words.
"""

CORPUS = """\
The engine reads a prompt, splits it into tokens, and writes their keys and values into a paged cache.
Each block of the cache holds sixteen tokens; a block table maps a sequence to its blocks.
When two requests share a system prompt, the second one finds the first one's blocks by hash.
A scheduler decides which requests run in each step, under a budget of tokens and sequences.
Long prompts are split into chunks so that short requests keep moving while a long one fills.
If memory runs out, the newest request is preempted and later recomputed from its tokens.
The sampler turns logits into tokens: greedy, temperature, top-k, top-p, min-p and penalties.
Hello! How are you today? I am fine, thank you. What is the capital of France? Paris.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Once upon a time there was a small model that wanted to answer every question it was asked.
It learned numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 1024 2048 4096 65536 3.14159.
It learned code: def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)
{"name": "mono-llm", "version": "0.1.0", "tags": ["inference", "server"], "ok": true}
<html><body><p>Paragraphs, lists, and tables.</p></body></html>
SELECT id, name FROM users WHERE age > 30 ORDER BY name;
Le café est très bon. Où est la gare? Ça va très bien, merci. Déjà vu, naïve, façade.
Ich möchte ein Glas Wasser, bitte. Größe, Straße, schön, müde, über.
日本語のテキストも少し含めます。東京は日本の首都です。こんにちは、世界。
中文也包含一些：你好，世界。今天天气很好。我们去公园吧。
Русский текст: привет, мир. Как дела? Всё хорошо.
Emoji too: 🙂 🚀 ✨ 👍🏽 ❤️ — and symbols: © ® ™ € £ ¥ § ¶ ° ± × ÷ → ← ↑ ↓.
User: Tell me a joke. Assistant: Why did the tensor cross the road? To reach the other device.
User: Write a haiku about caches. Assistant: Blocks wait in the pool, / hashes chain the past to now, / prefixes return.
User: What is two plus two? Assistant: Two plus two is four.
System: You are a helpful assistant. Answer briefly and truthfully.
Tools can be called with arguments in JSON, for example get_weather with {"city": "Berlin"}.
The weather in Berlin is cloudy with a high of 12 degrees and a chance of rain in the evening.
Streaming sends each new piece of text as soon as it is ready, ending with a final marker.
Embeddings map sentences to vectors; similar sentences have a high cosine similarity.
A reranker scores how well each document answers a query, and sorts them by that score.
Speech is turned into log-mel features, and a decoder writes the words that were spoken.
Images are resized, normalised and split into patches before a vision tower encodes them.
"""
