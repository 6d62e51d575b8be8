import click


@click.command("agent", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--stdio", is_flag=True, help="Serve protocol v1 on stdin/stdout (the default).")
@click.option("--listen", metavar="ADDR",
              help="Serve on a socket: vsock:PORT, unix:/path or tcp:HOST:PORT (tcp needs a token).")
@click.option("--token-file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Clients must present this token (default: $GIT_SLICER_TOKEN).")
@click.option("--once", is_flag=True, help="With --listen: serve one connection, then exit.")
def command(stdio, listen, token_file, once):
    """Run the guest agent (inside a VM)."""
    from ..agent.entry import main
    if stdio and listen:
        raise click.UsageError("--stdio and --listen are exclusive")
    argv = ["--listen", listen] if listen else ["--stdio"]
    if token_file:
        argv += ["--token-file", token_file]
    if once:
        argv.append("--once")
    raise SystemExit(main(argv))
