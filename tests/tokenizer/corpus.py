#!/usr/bin/env python3
"""A deterministic corpus of varied test strings for the tokenizer references: prose in many scripts, code,
JSON, emoji and ZWJ sequences, runs of spaces and newlines, CRLF, tabs, control characters and NUL, text that
looks like special tokens, random code points, and inputs of 10k+ characters.

  corpus.py [--n N] [--seed S] > corpus.jsonl     one JSON string per line
"""
import argparse
import json
import random

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Mixtral is a sparse mixture-of-experts network; each token is routed to 2 of 8 experts.",
    "Le cœur a ses raisons que la raison ne connaît point. Déjà vu, façade, naïve, œuvre.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Größe, Fußgänger.",
    "¿Dónde está la biblioteca? ¡Qué día tan bonito! Mañana será otro día.",
    "A língua portuguesa tem ç, ã, õ e muitas outras letras acentuadas.",
    "Всё смешалось в доме Облонских. Съешь же ещё этих мягких французских булок.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "العربية لغة جميلة، ويتحدث بها ملايين الناس حول العالم.",
    "עברית נכתבת מימין לשמאל, וגם המספרים 123 בתוכה.",
    "हिन्दी भारत की एक प्रमुख भाषा है। नमस्ते दुनिया!",
    "我们在这里测试中文分词的效果，包括标点符号。",
    "日本語の文章には、ひらがな・カタカナ・漢字が混在します。",
    "한국어 문장도 잘 처리되어야 합니다. 안녕하세요!",
    "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "Tiếng Việt có rất nhiều dấu thanh: à á ả ã ạ.",
    "Türkçe'de ı, İ, ş, ğ gibi harfler vardır.",
    "Zażółć gęślą jaźń. Pchnąć w tę łódź jeża.",
    "ქართული ენა უნიკალური დამწერლობით იწერება.",
    "Հայերենը հնդեվրոպական լեզու է։",
    "አማርኛ የኢትዮጵያ ቋንቋ ነው።",
    "தமிழ் மிகவும் பழமையான மொழி.",
    "Ελληνικά, русский, English, 中文 и 日本語 in one line.",
    "Combining marks: e\u0301 a\u0308 n\u0303 and precomposed é ä ñ.",
    "Math: ∑_{i=1}^{n} i² = n(n+1)(2n+1)/6, ∀x ∈ ℝ, √2 ≈ 1.41421356.",
    "Prices: $19.99, €5,00, £3.50, ¥1000, ₹250; 50% off!!!",
    "URL: https://example.com/path?query=1&b=%20x#frag and mail@example.org",
]

CODE = [
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"hello, world\\n\");\n\treturn 0;\n}\n",
    "const f = async (x) => { await sleep(10); return x?.y ?? [1, 2, 3].map(v => v * 2); };",
    "fn main() {\n    let v: Vec<u32> = (0..10).filter(|x| x % 2 == 0).collect();\n    println!(\"{:?}\", v);\n}",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "for f in *.txt; do echo \"$f\" | sed -e 's/a/b/g' >> out.log 2>&1; done",
    "<html>\n  <body class=\"main\">\n    <p>Hello &amp; welcome</p>\n  </body>\n</html>",
    "    if (x == 0) {\r\n        y = 1;\r\n    }\r\n",
    "template <typename T> struct S { T* p = nullptr; std::vector<std::pair<int,int>> v; };",
    "x = [i**2 for i in range(100) if i % 3 == 0]  # squares\n\n\n",
]

EMOJI = [
    "👍", "😀😃😄", "🦙", "👩‍👩‍👧‍👦", "👨🏽‍💻", "🏳️‍🌈", "🇫🇷🇩🇪🇯🇵", "1️⃣2️⃣", "❤️", "🧑🏿‍🤝‍🧑🏻",
    "🐻‍❄️", "👁️‍🗨️", "☕︎ ☕️", "🫠🫶🪿", "🎉 party 🎊",
]

SPECIALISH = [
    "<s>", "</s>", "<unk>", "<pad>", "<s> hello </s>", "[INST] hi [/INST]", "[INST]", "[/INST]",
    "[AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS] x [/TOOL_RESULTS]", "<0x41>", "<0x0A>", "<<SYS>>",
    "▁", "▁▁▁ already escaped ▁", "<s><s></s>", "[control_12]", "[IMG]", "<|im_start|>user",
]

WHITESPACE = [
    " ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", " \n ", "\n \n",
    "\u00a0", "\u2003", "\u3000", "\u200b", "\ufeff", "\u2028", "\u200d", "\u200e\u200f",
]

CONTROLS = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b[31m", "\x1f", "\x7f", "\x80", "\x9f",
            "\x00\x00", "a\x00b"]


def random_codepoint(rng):
    r = rng.random()
    if r < 0.3:
        return chr(rng.randint(0x20, 0x7E))
    if r < 0.5:
        return chr(rng.randint(0xA0, 0x2FF))
    if r < 0.7:
        return chr(rng.randint(0x370, 0x1FFF))
    if r < 0.85:
        return chr(rng.randint(0x3000, 0x9FFF))
    if r < 0.95:
        c = rng.randint(0xA000, 0xFFFD)
        return chr(c) if not 0xD800 <= c <= 0xDFFF else "x"
    return chr(rng.randint(0x10000, 0x10FFFF))


def random_json(rng, depth=0):
    r = rng.random()
    if depth > 3 or r < 0.3:
        return rng.choice([None, True, False, rng.randint(-10**6, 10**6), rng.random() * 1000,
                           rng.choice(PROSE)[:rng.randint(0, 30)]])
    if r < 0.65:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["id", "name", "value", "ключ", "键", "emoji🦙"]) + str(i): random_json(rng, depth + 1)
            for i in range(rng.randint(0, 4))}


def fragment(rng):
    kind = rng.random()
    if kind < 0.25:
        return rng.choice(PROSE)
    if kind < 0.38:
        return rng.choice(CODE)
    if kind < 0.48:
        return json.dumps(random_json(rng), ensure_ascii=rng.random() < 0.3, indent=rng.choice([None, 2]))
    if kind < 0.56:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
    if kind < 0.64:
        return rng.choice(SPECIALISH)
    if kind < 0.76:
        return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 6)))
    if kind < 0.82:
        return "".join(rng.choice(CONTROLS) for _ in range(rng.randint(1, 3)))
    if kind < 0.92:
        return "".join(random_codepoint(rng) for _ in range(rng.randint(1, 20)))
    return str(rng.randint(0, 10**rng.randint(1, 15))) + rng.choice(["", ".", ",", " ", "e-5"])


def make_corpus(n=2400, seed=1234):
    rng = random.Random(seed)
    out = [""]
    # Every building block on its own, then with a space before and after.
    for group in (PROSE, CODE, EMOJI, SPECIALISH, WHITESPACE, CONTROLS):
        for s in group:
            out += [s, " " + s, s + " "]
    # Runs of one whitespace character.
    for ch in (" ", "\n", "\t", "\r\n", "▁"):
        for k in (1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 33):
            out += [ch * k, "a" + ch * k + "b"]
    # Long inputs (10k+ characters).
    for i in range(8):
        s = ""
        while len(s) < 10_000 + 2_000 * i:
            s += fragment(rng) + rng.choice(["", " ", "\n", "  "])
        out.append(s)
    out.append("a" * 12_000)
    out.append(" " * 10_001)
    out.append("🦙" * 3_000)
    # Random mixtures.
    while len(out) < n:
        parts = [fragment(rng) for _ in range(rng.randint(1, 5))]
        seps = [rng.choice(["", " ", "  ", "\n", "\t", "\r\n", ""]) for _ in parts]
        out.append("".join(p + s for p, s in zip(parts, seps)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    for s in make_corpus(a.n, a.seed):
        print(json.dumps(s, ensure_ascii=True))


if __name__ == "__main__":
    main()
