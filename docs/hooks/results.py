"""mkdocs hook: the plots in benchmarks/results/ become part of the site.

The pages link to them as ``../benchmarks/results/NAME.png`` (which works when the Markdown
is read in the repository); this hook adds each PNG there to the site as
``results/NAME.png`` and points those links at it, so the build checks them like any other.
"""
from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PREFIX = "../benchmarks/results/"


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    # every page sits at the top of docs/, so results/ is a sibling path
    return markdown.replace(f"]({PREFIX}", "](results/")
