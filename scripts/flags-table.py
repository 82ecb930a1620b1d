#!/usr/bin/env python3
"""Renders a binary's `--help` as a Markdown table (flag, default, description) for README.md.

Usage: scripts/flags-table.py target/debug/proxy-server
"""
import re
import subprocess
import sys

out = subprocess.run([sys.argv[1], "--help"], capture_output=True, text=True, check=True).stdout
rows, cur = [], None
for line in out.splitlines():
    m = re.match(r"^\s+(?:-\w, )?(--[\w-]+)(\[?=?<[^>]*>\]?| <[^>]*>)?\s*$", line)
    if m:
        cur = [m.group(1), ""]
        rows.append(cur)
        continue
    if cur is not None and line.startswith("          "):
        cur[1] += (" " if cur[1] else "") + line.strip()
    elif not line.strip():
        continue
    else:
        cur = None
print("| flag | default | meaning |")
print("|---|---|---|")
for flag, text in rows:
    if flag == "--help":
        continue
    default = ""
    d = re.search(r"\[default: (.*)\]\s*$", text)
    if d:
        default = d.group(1)
        text = text[: d.start()].strip()
    text = text.replace("|", "\\|")
    print(f"| `{flag}` | `{default}` | {text} |" if default else f"| `{flag}` | | {text} |")
