"""WeasyPrint plumbing: the Jinja2 environment over report_templates/, and HTML -> PDF bytes with the
report's generated pictures served from memory."""

from __future__ import annotations

import logging
from pathlib import Path

import jinja2
import markupsafe

from mura_cli.choices import RESEARCH_NOTICE
from mura_cli.errors import ReportError
from mura_cli.files import atomic_write_bytes
from mura_cli.resources import data_dir
from mura_cli.wording import counted

PICTURE_SCHEME = "mura-picture"


def css_string(value) -> str:
    """A value made safe inside a double-quoted CSS string in a <style> element (margin-box texts)."""
    text = " ".join(str(value).split())
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("<", "\\3c ").replace(">", "\\3e ")  # no "</style>" inside a <style>
    return markupsafe.Markup(text)  # raw text in <style>: HTML escaping would show up in the page


def create_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("report_templates"))),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["css_string"] = css_string
    env.filters["counted"] = counted  # {{ n|counted("study") }}
    return env


def render_html(template: str, **context) -> str:
    return create_environment().get_template(template).render(notice=RESEARCH_NOTICE, **context)


PICTURE_TYPES = {"jpg": "image/jpeg", "png": "image/png"}


def add_picture(pictures: dict[str, bytes], data: bytes, kind: str = "jpg") -> str:
    """Register a generated picture under a short URL: the HTML stays small (no base64 data URIs for
    the HTML parser to wade through: they cost a quarter of the rendering time) and WeasyPrint embeds
    a JPEG as it is."""
    url = f"{PICTURE_SCHEME}:{len(pictures)}.{kind}"
    pictures[url] = data
    return url


def _fetcher(pictures: dict[str, bytes]):
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class PictureFetcher(URLFetcher):
        """The report's pictures from memory, its stylesheet from the package; nothing from a network."""

        def fetch(self, url, headers=None):
            if url.startswith(PICTURE_SCHEME + ":"):
                if url not in pictures:
                    raise ValueError(f"no picture {url}")
                kind = PICTURE_TYPES[url.rsplit(".", 1)[-1]]
                return URLFetcherResponse(url, pictures[url], {"Content-Type": kind})
            return super().fetch(url, headers)

    return PictureFetcher(allowed_protocols={"file", PICTURE_SCHEME})


def pdf_bytes(html: str, pictures: dict[str, bytes] | None = None) -> bytes:
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: Pango or its libraries are missing
        raise ReportError(
            f"PDF not written: WeasyPrint cannot start ({exc}); see the README's PDF notes"
        ) from None
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    try:
        document = HTML(
            string=html, base_url=str(data_dir("report_templates")), url_fetcher=_fetcher(pictures or {})
        )
        return document.write_pdf()
    except Exception as exc:
        raise ReportError(f"PDF not written: WeasyPrint failed ({type(exc).__name__}: {exc})") from None


def write_pdf(html: str, path: Path, pictures: dict[str, bytes] | None = None) -> Path:
    return atomic_write_bytes(path, pdf_bytes(html, pictures))
