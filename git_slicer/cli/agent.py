import click


@click.command("agent", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--stdio", is_flag=True, default=True, help="Serve protocol v1 on stdin/stdout (default).")
def command(stdio):
    """Run the guest agent (inside a VM)."""
    from ..agent.server import main
    raise SystemExit(main())
