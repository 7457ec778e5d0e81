#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/jinja_cases.json: small templates x variables rendered by
jinja2 in the environment transformers uses for chat templates (ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, transformers' tojson, raise_exception). Each case has
the output, or the exception when jinja2 raised. A second reference beside the
apply_chat_template fixtures, for corner cases of whitespace control, Python formatting and
filters. usage: make_jinja_cases.py OUT.json  (jinja2 3.1.x)"""
import json
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                    extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

V = {"s": "Hello, World", "n": 7, "f": 2.5, "l": [3, "b", None, True, 1.5], "d": {"b": 2, "a": 1, "C": 3},
     "u": "  Ünïcödé ẞ straße  ", "e": "", "none": None, "t": True, "neg": -7,
     "msgs": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Bye"}],
     "words": ["banana", "Apple", "cherry", "apple"], "nested": {"x": [1, {"y": [2, 3]}], "z": {}}}

T = [
    # whitespace control
    "a\n  {% if t %}\n  b\n  {% endif %}\nc",
    "a  {%- if t -%}  b  {%- endif -%}  c",
    "a\n  {%+ if t %}b{% endif +%}\nc",
    "x\n    {# comment #}\ny",
    "x {# c #} y\n{# own line #}\nz",
    "{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\n",
    "{% for i in [1,2] -%}\n  {{ i }}\n{%- endfor %}",
    "  {{ 'expr keeps spaces' }}  \n",
    "{% raw %}{{ x }}{% if %}{% endraw %}|{%- raw -%}  y  {%- endraw -%}  z",
    "line1\r\nline2\r\n{% if t %}\r\nok\r\n{% endif %}\r\n",
    "{% if t %}a{% elif n %}b{% else %}c{% endif %}{% if not t %}a{% elif n > 5 %}b{% else %}c{% endif %}",
    "\t{% set x = 1 %}\n\t{{ x }}",
    # numbers and Python formatting
    "{{ 1/3 }} {{ 2/2 }} {{ 10/4 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 123456789.123 }} {{ -0.0 }} {{ 3.0 * 2 }}",
    "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ -7 % 3 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 2 ** -1 }} {{ 2 ** 62 }}",
    "{{ f | round }} {{ 3.5 | round }} {{ 2.675 | round(2) }} {{ f | round(0, 'floor') }} {{ f | round(0, 'ceil') }} {{ n | round }}",
    "{{ '12' | int }} {{ '1.9' | int }} {{ 'x' | int(5) }} {{ f | int }} {{ '3' | float }} {{ 'x' | float }} {{ t | int }} {{ n | float }}",
    "{{ n | abs }} {{ neg | abs }} {{ -f | abs }} {{ n is odd }} {{ n is even }} {{ n is divisibleby 7 }} {{ 10 is divisibleby(3) }}",
    "{{ 1 == 1.0 }} {{ t == 1 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ none == none }} {{ 'x' != 'x' }}",
    # strings
    "{{ s.upper() }} {{ s.lower() }} {{ s.title() }} {{ 'hello world-wide' | title }} {{ 'hELLO' | capitalize }}",
    "{{ u.strip() }}|{{ u | trim }}|{{ u.lstrip() }}|{{ u.rstrip() }}|{{ 'xxaxx'.strip('x') }}|{{ '..a..' | trim('.') }}",
    "{{ s.split(', ') }} {{ 'a b  c'.split() }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ '  a b  '.split() }}",
    "{{ s.startswith('Hell') }} {{ s.endswith(('x', 'ld')) }} {{ s.find('o') }} {{ s.rfind('o') }} {{ s.count('l') }} {{ s.replace('l', 'L', 2) }}",
    "{{ s[0] }} {{ s[-1] }} {{ s[1:4] }} {{ s[::2] }} {{ s[::-1] }} {{ u[2:5] }} {{ s[100:] }}|",
    "{{ s | length }} {{ u | length }} {{ s | wordcount }} {{ 'hi' | center(9) }}| {{ 'abc' | center(8) }}|",
    "{{ s ~ n ~ none ~ t }} {{ 'ab' * 3 }} {{ 3 * 'x' }} {{ s | replace('o', '0') }} {{ s | reverse }}",
    "{{ 'a\nb\n\nc' | indent }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(width=1, blank=true) }}",
    "{{ 'The quick brown fox jumps over the lazy dog' | truncate(20) }}|{{ 'abcdefghijklmnopqrstuvwxyz' | truncate(10, true) }}|{{ 'short' | truncate(10) }}",
    "{{ '%s is %d years, %.2f%%' | format('Bob', 42, 3.14159) }} {{ '%r' | format('x') }} {{ '{} and {}'.format('a', 1) }} {{ '{0}{0}'.format('z') }}",
    "{{ 'a<b>&\"c\"' | e }} {{ 'x' | safe }} {{ 'line\\nbreak' }} {{ 'tab\\there' }} {{ '\\u00e9' }} {{ \"it's\" }}",
    "{{ 'abc'.isalpha() }} {{ '123'.isdigit() }} {{ 'a1'.isalnum() }} {{ ' '.isspace() }} {{ 'ABC'.isupper() }} {{ 'abc'.islower() }}",
    "{{ 'a\nb\r\nc'.splitlines() }} {{ ', '.join(['x', 'y']) }} {{ 'x' in 'xyz' }} {{ 'q' not in 'xyz' }}",
    # repr of containers
    "{{ l }} {{ d }} {{ nested }} {{ (1,) }} {{ (1, 'a') }} {{ [] }} {{ {} }} {{ ['it\\'s', \"q\\\"\"] }}",
    "{{ none }} {{ t }} {{ [none, t, false] }} {{ {'k': none} }} {{ 'x\\ny' | list }}",
    # tojson
    "{{ d | tojson }} {{ l | tojson }} {{ nested | tojson(indent=2) }} {{ d | tojson(sort_keys=true) }}",
    "{{ 'é\\u2028\"' | tojson }} {{ 'é' | tojson(ensure_ascii=true) }} {{ [1.0, 1e-7, 1e22, 100.0] | tojson }} {{ {1: 2} | tojson }}",
    "{{ msgs[0] | tojson(separators=(',', ':')) }} {{ [] | tojson(indent=2) }} {{ {'a': []} | tojson(indent=2) }}",
    # lists and filters
    "{{ l | length }} {{ l | first }} {{ l | last }} {{ l[1:3] }} {{ l[-2:] }} {{ l | reverse | list }} {{ [3, 1, 2] | sort }} {{ [3, 1, 2] | sort(reverse=true) }}",
    "{{ words | sort }} {{ words | sort(case_sensitive=true) }} {{ words | unique | list }} {{ words | max }} {{ words | min }} {{ [1, 5, 2] | max }}",
    "{{ msgs | map(attribute='role') | join(',') }} {{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }} {{ msgs | rejectattr('role', 'in', ['user', 'system']) | list | length }}",
    "{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }} {{ ['a', '', none, 'b'] | select | list }} {{ [1, 2, 3] | sum }} {{ msgs | sum(attribute='role') if false else 0 }}",
    "{{ d | dictsort }} {{ d | dictsort(by='value') }} {{ d | dictsort(reverse=true) }} {{ d | dictsort(case_sensitive=true) }} {{ d | items | list }}",
    "{{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('zz', 'dflt') }} {{ d.get('zz') }} {{ 'a' in d }} {{ d['b'] }} {{ d.b }}",
    "{{ [1, 2] + [3] }} {{ [0] * 3 }} {{ 2 in [1, 2] }} {{ ['x', 'y'] | join }} {{ [1, [2, 3]] | string }} {{ 'abc' | list }} {{ d | list }}",
    "{{ ['b', 'a'] | map('upper') | list }} {{ [' x ', 'y '] | map('trim') | join('|') }} {{ nested | map(attribute='x') | list if false else nested.x[1].y[0] }}",
    "{{ msgs | map(attribute='missing', default='-') | list }} {{ range(3) | list }} {{ range(1, 10, 4) | list }} {{ range(5, 0, -2) | list }}",
    # tests and undefined
    "{{ x is defined }} {{ x is undefined }} {{ x | default('d') }} {{ e | default('d') }} {{ e | default('d', true) }} {{ none | default('d') }} {{ x }}|",
    "{{ s is string }} {{ n is number }} {{ f is float }} {{ n is integer }} {{ t is boolean }} {{ l is sequence }} {{ d is mapping }} {{ l is iterable }} {{ none is none }} {{ n is sameas 7 }}",
    "{{ 'abc' is lower }} {{ 'ABC' is upper }} {{ n is gt 3 }} {{ n is lt 3 }} {{ n is ge 7 }} {{ n is le 6 }} {{ n is eq 7 }} {{ n is ne 7 }} {{ 2 is in [1, 2] }} {{ n is == 7 }}",
    "{{ msgs[0].missing is defined }} {{ msgs[0]['role'] }} {{ msgs[-1].content }} {{ msgs[10] is defined }} {% if msgs[0].missing %}yes{% else %}no{% endif %}",
    "{{ x.y }}",
    "{{ none.y }}",
    "{{ 1 + 'a' }}",
    "{{ raise_exception('custom failure ' ~ n) }}",
    "{{ [1, 2].append(3) }}",
    "{{ 1 / 0 }}",
    # statements
    "{% set a, b = [1, 2] %}{{ a }}{{ b }} {% set c = 'x', 'y' %}{{ c }}",
    "{% set ns = namespace(total=0, items=[]) %}{% for i in range(5) %}{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }} {{ ns.items }}",
    "{% for i in range(10) %}{% if i is odd %}{% continue %}{% endif %}{% if i > 6 %}{% break %}{% endif %}{{ i }}{% endfor %}",
    "{% for m in msgs %}{{ loop.index }}/{{ loop.length }}{{ loop.cycle('a', 'b') }}{{ loop.first }}{{ loop.last }}{% if not loop.first %}<{{ loop.previtem.role }}{% endif %}{% if not loop.last %}>{{ loop.nextitem.role }}{% endif %};{% endfor %}",
    "{% for m in msgs if m.role != 'system' %}{{ loop.index0 }}{{ m.role }}{% else %}empty{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|{% for a, b in [[1, 2], [3, 4]] %}{{ a * b }}{% endfor %}",
    "{% for i in [1, 2] %}{% for j in 'ab' %}{{ loop.depth }}{{ loop.index }}{{ i }}{{ j }} {% endfor %}{{ loop.depth }}{% endfor %}",
    "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(punct='.', name='C') }}",
    "{% macro row(x) -%}\n  [{{ x }}]\n{%- endmacro %}\n{{ row(1) }}{{ row(2) }}",
    "{% set block %}\n  inner {{ n }}\n{% endset %}[{{ block }}]{% set up | upper %}shout{% endset %}{{ up }}",
    "{% filter upper %}quiet {{ s }}{% endfilter %}|{% with a = 1, b = n %}{{ a + b }}{% endwith %}",
    "{{ 'yes' if t else 'no' }} {{ 'yes' if none else 'no' }} {{ ('a' if false) ~ '|' }} {{ t and 'A' or 'B' }} {{ none or 'fallback' }} {{ 0 and 1 }}",
    "{{ 1 < n < 10 }} {{ 1 < n > 10 }} {{ not none }} {{ not 'x' }} {{ -n }} {{ +n }} {{ -(1 + 2) * 3 }} {{ 2 + 3 * 4 ** 2 / 8 }}",
    "{% set x = 5 %}{% if true %}{% set x = 6 %}{% endif %}{{ x }}{% for i in [1] %}{% set x = 7 %}{{ x }}{% endfor %}{{ x }}",
    "{{ msgs | length > 2 }} {{ (msgs | first).role }} {{ msgs[1:] | map(attribute='role') | list }} {{ msgs[::-1][0].content }}",
    "{{ dict(a=1, b='x') }} {{ dict(a=1) | tojson }} {{ namespace(a=1).a }}",
    "{% set j = joiner(', ') %}{% for i in [1, 2, 3] %}{{ j() }}{{ i }}{% endfor %}",
    "{{ 'abc' | attr('upper') is defined }} {{ s.x is defined }}",
]

cases = []
for t in T:
    try:
        out = env.from_string(t).render(**V)
        cases.append({"template": t, "output": out})
    except Exception as e:
        cases.append({"template": t, "error": str(e), "type": type(e).__name__})
json.dump({"jinja2": jinja2.__version__, "vars": V, "cases": cases}, open(sys.argv[1], "w"),
          ensure_ascii=False, indent=1)
print("%d cases, %d errors" % (len(cases), sum("error" in c for c in cases)))
