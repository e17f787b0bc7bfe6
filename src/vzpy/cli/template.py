"""vzpy-template: build and list OS templates in TEMPLATE/cache.

    vzpy-template list
    vzpy-template build tiny [--name NAME]
    vzpy-template build debian [--suite S] [--name N] [--include p1,p2] [--mirror URL]

The template directory is --template-dir, else TEMPLATE from /etc/vz/vz.conf.
"""

from __future__ import annotations

import os
import sys
import time

import click

from .. import template
from ..errors import VZ_VE_TMPL_NOTSET, VzError
from .common import run_mapped

VZ_CONF = "/etc/vz/vz.conf"


def conf_value(path: str, key: str) -> str | None:
    """KEY's value in a vz.conf-style file (first occurrence wins), None if unset.

    Only what vzctl-reference.md §2.1 says; no $VEID expansion (TEMPLATE has none).
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        line = line.strip()
        name, sep, value = line.partition("=")
        if not sep or line.startswith("#") or name != key:
            continue
        if value.startswith('"'):
            end = value.rfind('"')
            value = value[1:end] if end > 0 else value[1:]
        return value
    return None


def resolve_template_dir(option: str | None, vz_conf: str = VZ_CONF) -> str:
    if option:
        return option
    value = conf_value(vz_conf, "TEMPLATE")
    if not value:
        raise VzError(
            f"TEMPLATE is not set in {vz_conf}; use --template-dir",
            exit_code=VZ_VE_TMPL_NOTSET,
        )
    return value


def human_size(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


template_dir_option = click.option(
    "--template-dir",
    metavar="DIR",
    help=f"Template directory (default: TEMPLATE from {VZ_CONF}).",
)


def _template_dir(ctx: click.Context, option: str | None) -> str:
    return resolve_template_dir(option or ctx.find_root().params.get("template_dir"))


def _report(path: str, started: float) -> None:
    size = os.stat(path).st_size
    click.echo(f"Template built: {path} ({human_size(size)}, {time.monotonic() - started:.1f} s)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@template_dir_option
def cli(template_dir: str | None) -> None:
    """Build and list OS templates (TEMPLATE/cache/NAME.tar.gz)."""


@cli.command("list")
@template_dir_option
@click.pass_context
def list_cmd(ctx: click.Context, template_dir: str | None) -> None:
    """List the cached templates with their sizes."""
    tdir = _template_dir(ctx, template_dir)
    found = template.list_templates(tdir)
    if not found:
        click.echo(f"No templates in {template.cache_dir(tdir)}", err=True)
        return
    width = max(len("NAME"), *(len(t.name) for t in found))
    click.echo(f"{'NAME':<{width}}  {'SIZE':>7}  FILE")
    for t in found:
        click.echo(f"{t.name:<{width}}  {human_size(t.size):>7}  {t.path}")


@cli.group()
def build() -> None:
    """Build a template into TEMPLATE/cache."""


@build.command("tiny")
@click.option("--name", default=template.TINY_NAME, show_default=True, help="Template name.")
@click.option(
    "--busybox", default=template.BUSYBOX, show_default=True, help="Static busybox to use."
)
@template_dir_option
@click.pass_context
def build_tiny(ctx: click.Context, name: str, busybox: str, template_dir: str | None) -> None:
    """busybox-static and a few /etc files; no /sbin/init (vzpy-init is used)."""
    tdir = _template_dir(ctx, template_dir)
    started = time.monotonic()
    _report(template.build_tiny(tdir, name=name, busybox=busybox), started)


@build.command("debian")
@click.option("--suite", default=template.DEBIAN_SUITE, show_default=True)
@click.option("--name", default=template.DEBIAN_NAME, show_default=True, help="Template name.")
@click.option(
    "--include",
    "include",
    multiple=True,
    metavar="PKG[,PKG...]",
    help=f"Extra packages (always: {','.join(template.DEBIAN_PACKAGES)}).",
)
@click.option("--mirror", metavar="URL", help="Debian mirror (default: the host's apt sources).")
@click.option("-q", "--quiet", is_flag=True, help="Do not show mmdebstrap's progress.")
@template_dir_option
@click.pass_context
def build_debian(
    ctx: click.Context,
    suite: str,
    name: str,
    include: tuple[str, ...],
    mirror: str | None,
    quiet: bool,
    template_dir: str | None,
) -> None:
    """Minimal Debian (mmdebstrap --variant=minbase) with python3."""
    tdir = _template_dir(ctx, template_dir)
    started = time.monotonic()
    path = template.build_debian(
        tdir,
        name=name,
        suite=suite,
        include=template.parse_packages(include),
        mirror=mirror,
        log=None if quiet else lambda line: click.echo(line, err=True),
    )
    _report(path, started)


def main(argv: list[str] | None = None) -> int:
    def run() -> int | None:
        try:
            return cli.main(args=argv, prog_name="vzpy-template", standalone_mode=False)
        except click.exceptions.Abort as err:  # click's wrapping of Ctrl-C
            raise KeyboardInterrupt from err

    rc = run_mapped(run)
    if argv is None:
        sys.exit(rc)
    return rc


if __name__ == "__main__":
    main()
