"""The layering that ARCHITECTURE.md declares holds in the code: every module
of `spectral_density/` is in its table, and imports only from layers below."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def declared_layers():
  """{module name: layer} from ARCHITECTURE.md's `spectral_density/` table."""
  text = (ROOT / 'ARCHITECTURE.md').read_text()
  return {m: int(layer) for layer, m in
          re.findall(r'^\| (\d+) \| `(\w+)\.py` \|', text, re.MULTILINE)}


def package_imports(path):
  """Names of `spectral_density` modules that the file imports."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == 'spectral_density':
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith(
        'spectral_density.'):
      names.add(node.module.split('.')[1])
  return names


def test_every_module_is_declared_and_imports_only_from_layers_below():
  layers = declared_layers()
  modules = {p.stem: p for p in (ROOT / 'spectral_density').glob('*.py')}
  assert set(modules) == set(layers), (
      'ARCHITECTURE.md and spectral_density/ list different modules: '
      f'{sorted(set(modules) ^ set(layers))}')
  upward = [(name, imported) for name, path in modules.items()
            for imported in package_imports(path) if imported in layers
            and layers[imported] <= layers[name] and name != '__init__']
  assert not upward, f'imports from the same or a higher layer: {upward}'
