#!/usr/bin/env python3
"""Import edges between the top-level modules of a crate's src/, and the cycles among them.

Usage (from the repository root):
    python3 xtask/modgraph.py [SRC_DIR [CRATE_NAME]] [--edges] [--sub MODULE]
    python3 xtask/modgraph.py daemon/src mcpwatchd --edges
    python3 xtask/modgraph.py daemon/src mcpwatchd --sub proxy    # the modules inside proxy/

An edge A -> B exists when a file of module A (A.rs or A/**.rs) names `crate::B` (in a
`use` or a path, `use crate::{B, ...}` groups included), or `super::super::B` from A/x.rs;
lib.rs is `<lib>` (its bare `B::` paths count, and `crate::f` for an item of lib.rs is an
edge to `<lib>`), main.rs is `<main>` (its `CRATE_NAME::B` paths count). Comments and
string literals are stripped; edges only from `#[cfg(test)] mod` blocks are reported
apart ("test only"). Exit status 1 when non-test code has a cycle.

A grep-level check, not a compiler: a path spelled through a `use` alias or a macro is
not seen. xtask's test `daemon_modules_import_one_way` runs it on daemon/src and on
proxy/.
"""
import os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else "daemon/src"
crate = sys.argv[2] if len(sys.argv) > 2 else "mcpwatchd"

def strip_comments(text):
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i); i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i): depth += 1; i += 2
                elif text.startswith("*/", i): depth -= 1; i += 2
                else: i += 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""'); i = j + 1
        elif c == "r" and re.match(r'r#*"', text[i:i+10]) and (i == 0 or not (text[i-1].isalnum() or text[i-1] == "_")):
            m = re.match(r'r(#*)"', text[i:]); close = '"' + m.group(1)
            j = text.find(close, i + len(m.group(0))); out.append('""')
            i = n if j < 0 else j + len(close)
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i+4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:]); out.append("' '"); i += len(m.group(0))
        else:
            out.append(c); i += 1
    return "".join(out)

def split_tests(code):
    """(main code, test code): test code is every `#[cfg(test)] mod x { ... }` block."""
    main, tests, pos = [], [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", code):
        if m.start() < pos: continue
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0); j += 1
        main.append(code[pos:m.start()]); tests.append(code[m.start():j]); pos = j
    main.append(code[pos:])
    return "".join(main), "".join(tests)

def group_heads(code, start):
    """Top-level names inside the brace group that begins at code[start] == '{'."""
    depth, j, cur, heads = 0, start, "", []
    while j < len(code):
        ch = code[j]
        if ch == "{":
            depth += 1
            if depth == 1: j += 1; continue
        elif ch == "}":
            depth -= 1
            if depth == 0: heads.append(cur); break
        elif ch == "," and depth == 1:
            heads.append(cur); cur = ""; j += 1; continue
        if depth == 1: cur += ch
        j += 1
    return [re.match(r"\s*(\w+)", h).group(1) for h in heads if re.match(r"\s*(\w+)", h)]

def targets(code, prefix):
    names = []
    for m in re.finditer(prefix + r"\s*::\s*(\{|\w+)", code):
        if m.group(1) == "{": names += group_heads(code, m.start(1))
        else: names.append(m.group(1))
    return names

mods = set()
for e in os.listdir(src):
    p = os.path.join(src, e)
    if e.endswith(".rs") and e not in ("lib.rs", "main.rs"): mods.add(e[:-3])
    elif os.path.isdir(p): mods.add(e)

lib_text = strip_comments(open(os.path.join(src, "lib.rs")).read()) if os.path.exists(os.path.join(src, "lib.rs")) else ""
lib_items = set(re.findall(r"pub\s+(?:async\s+)?(?:fn|struct|enum|const|static|type|trait)\s+(\w+)", lib_text))
lib_items |= set(re.findall(r"pub\s+use\s+[\w:]*?(\w+)\s*;", lib_text)) | set(re.findall(r"pub\s+use\s+[\w:]+\s+as\s+(\w+)\s*;", lib_text))

edges = {}  # (a, b) -> {"main": set(files), "test": set(files)}
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"): continue
        path = os.path.join(root, f); rel = os.path.relpath(path, src)
        parts = rel.split(os.sep)
        a = parts[0][:-3] if len(parts) == 1 else parts[0]
        if a in ("lib", "main"): a = "<" + a + ">"
        code = strip_comments(open(path).read())
        for kind, part in zip(("main", "test"), split_tests(code)):
            names = targets(part, r"\bcrate")
            if a == "<main>": names += targets(part, r"\b" + crate)
            if a == "<lib>": names += re.findall(r"(?<![\w:])(\w+)\s*::", part)
            if len(parts) == 2: names += targets(part, r"\bsuper\s*::\s*super")
            for b in names:
                if b in lib_items and b not in mods: b = "<lib>"
                if (b in mods or b == "<lib>") and b != a:
                    edges.setdefault((a, b), {"main": set(), "test": set()})[kind].add(rel)

def cycles(pairs):
    g = {}
    for a, b in pairs: g.setdefault(a, set()).add(b)
    # Tarjan SCC
    idx, low, on, st, out, k = {}, {}, set(), [], [], [0]
    def visit(v):
        idx[v] = low[v] = k[0]; k[0] += 1; st.append(v); on.add(v)
        for w in g.get(v, ()):
            if w not in idx: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in list(g):
        if v not in idx: visit(v)
    return out

if "--sub" in sys.argv:
    sub = sys.argv[sys.argv.index("--sub") + 1]
    d = os.path.join(src, sub)
    subs = {f[:-3] for f in os.listdir(d) if f.endswith(".rs") and f != "mod.rs"}
    edges = {}
    for f in sorted(os.listdir(d)):
        if not f.endswith(".rs"): continue
        a = "<" + sub + ">" if f == "mod.rs" else f[:-3]
        code = strip_comments(open(os.path.join(d, f)).read())
        for kind, part in zip(("main", "test"), split_tests(code)):
            names = targets(part, r"\bcrate\s*::\s*" + sub)
            names += targets(part, r"\bsuper") if f != "mod.rs" else targets(part, r"\bself")
            if f == "mod.rs": names += re.findall(r"(?<![\w:])(\w+)\s*::", part)
            for b in names:
                if b in subs and b != a:
                    edges.setdefault((a, b), {"main": set(), "test": set()})[kind].add(f)

show = "--edges" in sys.argv
for label, pairs in (("non-test code", [e for e, k in edges.items() if k["main"]]),
                     ("all code incl. #[cfg(test)]", list(edges))):
    comps = cycles(pairs)
    print(f"== {label}: {len(pairs)} edges, {len(comps)} cyclic component(s)")
    for c in comps:
        print("  cycle among:", " ".join(c))
        for a, b in sorted(pairs):
            if a in c and b in c:
                k = edges[(a, b)]
                print(f"    {a} -> {b}   ({', '.join(sorted(k['main'] | k['test']))}{'' if k['main'] else '; test only'})")
if show:
    print("== edges (a -> b: files)")
    for (a, b), k in sorted(edges.items()):
        print(f"  {a} -> {b}: {', '.join(sorted(k['main']))}" + (f" [test: {', '.join(sorted(k['test']))}]" if k["test"] else ""))

sys.exit(1 if cycles([e for e, k in edges.items() if k["main"]]) else 0)
