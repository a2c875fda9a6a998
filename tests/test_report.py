"""The benchmarks' dated reports (`benchmarks/report.py`): what they print,
stamped with the commit, date, machine and command that made it."""

import datetime
import os
import subprocess

import pytest

from benchmarks import report


def _table():
  print('jax on cpu')
  print('| model | value |')
  print('|---|---|')
  print('| MLP | 0.5 |')
  return 42


def test_run_writes_what_main_printed_under_its_provenance(
    tmp_path, monkeypatch, capsys):
  monkeypatch.setenv(report.REPORT_DIR_ENV, str(tmp_path))
  assert report.run('bench_x', _table) == 42
  assert '| MLP | 0.5 |' in capsys.readouterr().out  # still printed
  [path] = tmp_path.glob('bench_x_*.md')
  text = path.read_text()
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=report.ROOT,
                        capture_output=True, text=True, check=True).stdout
  assert f'| commit | `{head.strip()}' in text
  assert f', {os.cpu_count()} cores |' in text
  today = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')
  assert f'| date | {today} ' in text
  assert '| command | `python ' in text
  assert ' at the start, ' in text and '| load average | ' in text
  # The printed table stays a Markdown table, the text line a paragraph.
  assert '\njax on cpu\n\n| model | value |\n|---|---|\n| MLP | 0.5 |\n' in text
  assert f'[{path.name[len("bench_x_"):-3]}]({path.name})' in (
      tmp_path / report.INDEX).read_text()


def test_index_lists_the_latest_of_each_report_first(tmp_path):
  for stamp in ('2026-01-02T0300Z', '2026-03-01T0000Z', '2025-12-31T2359Z'):
    prov = dict(report.provenance(), stamp=stamp)
    report.write('trace', '| a |\n|---|\n| 1 |\n', prov, tmp_path)
  report.write('basis_memory', 'plain text', None, tmp_path)
  rows = (tmp_path / report.INDEX).read_text().splitlines()
  [trace] = [r for r in rows if r.startswith('| trace |')]
  assert trace == ('| trace | [2026-03-01T0000Z](trace_2026-03-01T0000Z.md) | '
                   '[2026-01-02T0300Z](trace_2026-01-02T0300Z.md), '
                   '[2025-12-31T2359Z](trace_2025-12-31T2359Z.md) |')
  assert [r.split(' |')[0] for r in rows if r.startswith('| ') and
          '[' in r] == ['| basis_memory', '| trace']
  # Output without a Markdown table is kept verbatim in a code block.
  [plain] = tmp_path.glob('basis_memory_*.md')
  assert plain.read_text().endswith('```text\nplain text\n```\n')


def test_a_report_name_must_be_a_plain_word(tmp_path):
  with pytest.raises(ValueError, match='^name: '):
    report.write('../x', 'y', None, tmp_path)
