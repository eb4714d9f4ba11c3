#!/usr/bin/env python3
"""Checks the source layout's rules, so a change that breaks them fails the
test command:

- the modules under src/ import each other without a circle, both between
  top-level modules (`crate::a` -> `crate::b`) and between their children
  (`crate::a::x` -> `crate::b::y`);
- nothing in src/messages/ imports from actors/ or api/;
- no .rs file in src/ has more than 800 lines before its test module
  (`#[cfg(test)] mod …`; test-only items above it count).

Imports are read from the text (`crate::...` paths and `use crate::{...}`
groups), comments stripped. Prints the five biggest files; exits 1 on a
broken rule.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_LINES = 800


def module_of(path, depth):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return None
    return "::".join(rel[:depth])


def code_of(path):
    text = open(path, encoding="utf-8").read()
    cut = re.search(r"^\s*#\[cfg\(test\)\]", text, re.M)
    if cut:
        text = text[: cut.start()]
    return re.sub(r"//[^\n]*", "", text)


def edges(depth):
    out = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(d, f)
            m = module_of(path, depth)
            if m is None:
                continue
            code = code_of(path)
            targets = set()
            for a, b in re.findall(r"crate::([a-z_]+)(?:::([a-z_]+))?", code):
                targets.add(a if depth == 1 or not b else f"{a}::{b}")
            for group in re.findall(r"use crate::\{([^;]*)\};", code, re.S):
                for name in re.findall(r"(?:^|[,{\s])([a-z_]+)(?=::|\s*[,}]|$)", group):
                    if name != "self":
                        targets.add(name)
            for t in targets:
                t = "::".join(t.split("::")[:depth])
                top_same = t.split("::")[0] == m.split("::")[0]
                if t != m and not (depth == 1 and top_same):
                    out.setdefault(m, set()).add(t)
    return out


def cycles(graph):
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    nodes = set(graph) | {w for ws in graph.values() for w in ws}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def main():
    ok = True
    for depth in (1, 2):
        graph = edges(depth)
        found = cycles(graph)
        for comp in found:
            ok = False
            print(f"import circle among {comp}:")
            for a in comp:
                print(f"  {a} -> {sorted(w for w in graph.get(a, ()) if w in comp)}")
        if not found:
            print(f"modules at depth {depth}: {len(graph)} import others, no circle")
    for d, _, files in os.walk(os.path.join(ROOT, "messages")):
        for f in files:
            code = code_of(os.path.join(d, f))
            if re.search(r"crate::(actors|api)\b", code):
                ok = False
                print(f"src/messages/{f} imports from actors/ or api/")
    sizes = []
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(d, f)
                text = open(path, encoding="utf-8").read()
                # The test module, not the first `#[cfg(test)]` item: a
                # test-only helper above the production code after it
                # would otherwise hide that code from the count.
                cut = re.search(r"^#\[cfg\(test\)\]\s*\n(\s*#\[[^\n]*\]\s*\n)*\s*(pub(\(\w+\))? )?mod \w+", text, re.M)
                n = text[: cut.start()].count("\n") if cut else text.count("\n")
                sizes.append((n, os.path.relpath(path, os.path.join(ROOT, ".."))))
    sizes.sort(reverse=True)
    print("biggest files (lines before tests):")
    for n, p in sizes[:5]:
        print(f"  {n:5} {p}")
    for n, p in sizes:
        if n > MAX_LINES:
            ok = False
            print(f"{p}: {n} lines, over {MAX_LINES}")
    sys.exit(0 if ok else 1)


main()
