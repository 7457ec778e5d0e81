#!/usr/bin/env python3
"""Builds the tokenizer test corpus (tests/fixtures/tokenizer/corpus.jsonl) and, with --bench,
a larger benchmark text (one JSON string per document).

Sources are files of a Debian machine (vim and Node.js documentation for English prose, the
Python standard library and C headers for code, gettext catalogs of /usr/share/locale for 20+
languages) plus generated strings for the cases the issue lists: emoji and ZWJ sequences,
whitespace and newline runs, digit runs, contractions in both cases, text that spells special
tokens, invalid UTF-8, decomposed Unicode. Deterministic for a given machine (seeded).

Line format: a JSON string, or {"hex": "..."} for bytes that are not valid UTF-8. Reference
tools turn those bytes into text the way HF's Python API must receive them:
bytes.decode("utf-8", errors="replace") (maximal-subpart U+FFFD); kiln gets the raw bytes and
must do the same replacement itself.

usage: make_corpus.py OUT.jsonl [--bench BENCH.jsonl]"""
import gettext
import glob
import json
import os
import random
import sys

R = random.Random(20261125)


def read(path):
    try:
        with open(path, encoding='utf-8', errors='strict') as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ''


def windows(text, n, min_lines=1, max_lines=12):
    lines = text.split('\n')
    out = []
    if len(lines) < 2:
        return out
    for _ in range(n):
        a = R.randrange(len(lines))
        b = min(len(lines), a + R.randint(min_lines, max_lines))
        s = '\n'.join(lines[a:b])
        if s.strip():
            out.append(s)
    return out


def prose_files():
    return sorted(glob.glob('/usr/share/vim/vim90/doc/*.txt')) + \
        sorted(glob.glob('/usr/share/doc/nodejs/api/*.md'))


def code_files():
    return sorted(glob.glob('/usr/lib/python3*/[a-z]*.py')) + \
        sorted(glob.glob('/usr/include/*.h'))


LANGS = ['zh_CN', 'zh_TW', 'ja', 'ko', 'ru', 'uk', 'ar', 'he', 'hi', 'th', 'vi', 'el', 'de',
         'fr', 'es', 'pt_BR', 'tr', 'pl', 'cs', 'fa', 'bn', 'ta', 'ka', 'hy', 'am', 'my', 'km']


def catalog_strings(lang, limit):
    out = []
    for mo in sorted(glob.glob('/usr/share/locale/%s/LC_MESSAGES/*.mo' % lang)):
        try:
            with open(mo, 'rb') as f:
                cat = gettext.GNUTranslations(f)
        except Exception:
            continue
        for k, v in cat._catalog.items():
            if isinstance(v, str) and v.strip() and k:
                out.append(v)
        if len(out) > limit * 4:
            break
    R.shuffle(out)
    return out[:limit]


EMOJI = ['😀', '😂', '🥲', '👍', '👍🏽', '👩‍💻', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🇫🇷', '🇯🇵', '❤️', '❤️‍🔥',
         '🧑🏿‍🚀', '1️⃣', '#️⃣', '🤷‍♀️', '👁️‍🗨️', '🐈‍⬛', '🫠', '🦀', '🚀', '✨', '™', '©', '🔥🔥🔥',
         '👋🏻', '🏴‍☠️', '🧔‍♂️', '💁🏾‍♀️', '🙇', '🇺🇳', '🏴󠁧󠁢󠁳󠁣󠁴󠁿']
SPACES = [' ', '  ', '\t', '\n', '\r\n', '\n\n', '\r', '\u00a0', '\u3000', '\u2028', '\u2029',
          '\u0085', '\u2003', '\u200b', '\u202f', '\x0b', '\x0c', ' \n ', '\t\t\n']
SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<|start_header_id|>',
            '<|end_header_id|>', '<|reserved_special_token_0|>', '<|reserved_special_token_250|>',
            '<|python_tag|>', '<|eom_id|>', '<s>', '</s>', '<unk>', '<|im_start|>', '<|im_end|>',
            '<|endoftext|>', '<think>', '</think>', '<tool_call>', '<bos>', '<eos>',
            '<start_of_turn>', '<end_of_turn>', '<pad>', '<unused12>',
            '<｜begin▁of▁sentence｜>', '<｜User｜>', '<｜Assistant｜>', '<｜tool▁sep｜>',
            '<|begin_of_text|', '<|eot_id', '|>', '<|', '<s', '< s>', '<|BEGIN_OF_TEXT|>']
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M",
                "'LL", "'D", "'Re", "'vE", "’s", "’t", "'ſ", "'K", "'Ll", "''s", "'x"]
WORDS = ['I', 'you', 'we', 'they', 'it', 'don', 'can', 'won', 'she', 'he', 'YOU', 'WE', 'THEY',
         'IT', 'DON', 'CAN', 'Tom', 'that', 'There', 'what', 'WHAT', 'o', 'rock', 'n']


def rand_unicode(n):
    blocks = [(0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3), (0x0400, 0x04FF),
              (0x0370, 0x03FF), (0x0600, 0x06FF), (0x0900, 0x097F), (0x0E00, 0x0E7F),
              (0x0300, 0x036F), (0x2000, 0x206F), (0x2190, 0x23FF), (0x1F300, 0x1F64F),
              (0x00A0, 0x024F), (0x10000, 0x1007F), (0x1D400, 0x1D4FF), (0xFF00, 0xFFEF),
              (0x20000, 0x2A6DF), (0x0590, 0x05FF), (0x1100, 0x11FF), (0x0021, 0x007E),
              (0x2460, 0x24FF), (0x2150, 0x218F)]
    out = []
    for _ in range(n):
        a, b = R.choice(blocks)
        c = R.randint(a, b)
        if 0xD800 <= c < 0xE000:
            c = 0x41
        out.append(chr(c))
    return ''.join(out)


def invalid_bytes():
    pieces = [b'\xff', b'\xfe', b'\xc0\xaf', b'\xe0\x80\xaf', b'\xed\xa0\x80', b'\xed\xbf\xbf',
              b'\xf4\x90\x80\x80', b'\xf5\x80', b'\x80', b'\xbf\xbf', b'\xe4\xb8', b'\xe4',
              b'\xf0\x9f\x98', b'\xf0\x9f', b'\xc3', b'\xc2\x41', b'\xe2\x82\x28', b'\xf8\x88\x80\x80\x80',
              b'\xc1\xbf', b'\xe0\x9f\xbf', b'\xf0\x8f\xbf\xbf', b'\x00', b'\xef\xbf\xbd']
    good = [b'hello', b' world', 'é'.encode(), '中文'.encode(), '😀'.encode(), b'\n', b' ',
            b'123', b"'s", b'<|eot_id|>']
    out = []
    for _ in range(R.randint(1, 8)):
        out.append(R.choice(pieces) if R.random() < 0.5 else R.choice(good))
    return b''.join(out)


def nfc_cases():
    base = ['e\u0301', 'a\u0308', 'A\u030a', 'o\u0302\u0323', 'o\u0323\u0302', '\u1100\u1161',
            '\u1100\u1161\u11a8', 'n\u0303', 'u\u0308\u0301', '\u212b', '\u2126', 'e\u0301\u0301',
            '\u0958', 'c\u0327', 'Ω', 'ﬁ', '\u00c5', 'i\u0307', 'q\u0307\u0323', '\u0344',
            '\u0f73', 'ẛ\u0323', '가\u11a8', 'ᄀ각', '\u0340', 'a\u0328\u0301', 'e\u0301a']
    out = []
    for _ in range(300):
        out.append(''.join(R.choice(base) + (R.choice([' ', '', 'x', '.', '\n']))
                           for _ in range(R.randint(1, 8))))
    return out


def main():
    out_path = sys.argv[1]
    bench_path = sys.argv[sys.argv.index('--bench') + 1] if '--bench' in sys.argv else None
    prose = [read(p) for p in prose_files()]
    code = [read(p) for p in code_files()]
    prose = [t for t in prose if t]
    code = [t for t in code if t]
    cats = {lang: catalog_strings(lang, 400) for lang in LANGS}
    multi = [s for v in cats.values() for s in v]

    corpus = []
    for _ in range(900):
        corpus += windows(R.choice(prose), 1)
    for _ in range(700):
        corpus += windows(R.choice(code), 1, 1, 20)
    for lang in LANGS:
        corpus += cats[lang][:40]
    for _ in range(400):  # mixed scripts in one string
        corpus.append(R.choice([' ', '', '\n', ', ']).join(R.choice(multi) for _ in range(R.randint(2, 4))))
    for _ in range(300):
        corpus.append(rand_unicode(R.randint(1, 40)))
    for _ in range(300):
        corpus.append(''.join(R.choice(EMOJI + [' ', 'ok', '!', '\u200d', '\ufe0f'])
                              for _ in range(R.randint(1, 12))))
    for _ in range(400):
        corpus.append(''.join(R.choice(SPACES) * R.randint(1, 30) + R.choice(['', 'a', 'word', '.', '1', '😀', 'x y'])
                              for _ in range(R.randint(1, 6))))
    for _ in range(400):
        d = ''.join(R.choice('0123456789') for _ in range(R.randint(1, 40)))
        style = R.randrange(6)
        if style == 1:
            d = ' '.join(d[i:i + 3] for i in range(0, len(d), 3))
        elif style == 2:
            d = '$' + d[:7] + '.' + d[7:9] + ' and ' + d[9:]
        elif style == 3:
            d = R.choice(['٣٤٥', '१२३', '１２３４', '²³', 'Ⅻ', '½', '໑໒']) + d
        elif style == 4:
            d = 'v' + '.'.join(d[i:i + 2] for i in range(0, len(d), 2)) + 'rc1'
        corpus.append(d)
    for _ in range(400):
        s = []
        for _ in range(R.randint(1, 6)):
            s.append(R.choice(WORDS) + R.choice(CONTRACTIONS) + R.choice([' ', '', '!', '\n', ' x']))
        corpus.append(''.join(s))
    for _ in range(400):
        s = []
        for _ in range(R.randint(1, 5)):
            s.append(R.choice(['', ' ', '  ', '\n', 'hi', 'text ', 'x']) + R.choice(SPECIALS))
        corpus.append(''.join(s) + R.choice(['', ' ', ' tail', '\n']))
    invalid = [invalid_bytes() for _ in range(300)]
    corpus += nfc_cases()
    # edge cases
    corpus += ['', ' ', '\n', 'a', '\x00', 'a\x00b', '\x01\x02\x7f', '\ufeffBOM', '\ufffd', '𝔘𝔫𝔦',
               'x' * 3000, 'ab' * 2000, ' ' * 5000, '\n' * 3000, '1' * 3000, '😀' * 500,
               'supercalifragilisticexpialidocious' * 40, '中' * 2000, 'Ⅰ' * 100, '\t' * 700,
               'a\u0301' * 500, '<|eot_id|>' * 200, "I'M " * 300]
    for _ in range(700):  # concatenations of everything above
        corpus.append(''.join(R.choice(corpus) for _ in range(R.randint(2, 4))))
    for _ in range(15):  # long documents
        corpus.append('\n'.join(windows(R.choice(prose), 1, 200, 600)))

    with open(out_path, 'w', encoding='utf-8') as f:
        for s in corpus:
            f.write(json.dumps(s, ensure_ascii=False) + '\n')
        for b in invalid:
            f.write(json.dumps({'hex': b.hex()}) + '\n')
    print('%s: %d strings' % (out_path, len(corpus) + len(invalid)))

    if bench_path:
        docs = []
        size = 0
        target = 12 << 20
        while size < target:
            r = R.random()
            if r < 0.5:
                d = '\n'.join(windows(R.choice(prose), 1, 40, 160))
            elif r < 0.75:
                d = '\n'.join(windows(R.choice(code), 1, 40, 160))
            else:
                d = '\n'.join(R.choice(multi) for _ in range(R.randint(20, 80)))
            if d:
                docs.append(d)
                size += len(d.encode())
        with open(bench_path, 'w', encoding='utf-8') as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + '\n')
        print('%s: %d documents, %d bytes' % (bench_path, len(docs), size))


if __name__ == '__main__':
    main()
