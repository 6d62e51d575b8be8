"""`git slicer completion bash|zsh|fish`: shell completion through click's completion protocol.

The bash script defines `_git_slicer`, the function git's own bash completion calls for
`git slicer <TAB>`, and also completes `git-slicer <TAB>` when run directly.
"""

import click

COMPLETE_VAR = "_GIT_SLICER_COMPLETE"

BASH = r'''# git-slicer completion for bash: eval "$(git slicer completion bash)"
__git_slicer_ask() {
    # $1: index of the current word; the rest: the words, starting with git-slicer.
    local cword=$1; shift
    local IFS=$'\n' line type value
    COMPREPLY=()
    compopt -o nosort 2>/dev/null     # keep our order: this worktree's linked VMs come first
    for line in $(COMP_WORDS="$*" COMP_CWORD=$cword _GIT_SLICER_COMPLETE=bash_complete git-slicer 2>/dev/null); do
        type=${line%%,*}; value=${line#*,}
        case $type in
            dir) COMPREPLY+=($(compgen -d -- "$value")) ;;
            file) COMPREPLY+=($(compgen -f -- "$value")) ;;
            *) COMPREPLY+=("$value") ;;
        esac
    done
}
# Called by git's completion for `git slicer ...` (words, cword and __git_cmd_idx come from it).
_git_slicer() {
    local idx=${__git_cmd_idx:-1}
    __git_slicer_ask $((cword - idx)) git-slicer "${words[@]:$((idx + 1))}"
}
# `git-slicer ...` typed directly.
__git_slicer_direct() {
    __git_slicer_ask "$COMP_CWORD" git-slicer "${COMP_WORDS[@]:1}"
}
complete -o default -F __git_slicer_direct git-slicer
'''


@click.command("completion", short_help="Print a shell completion script.", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def command(shell):
    """Print a completion script: eval "$(git slicer completion bash)"."""
    if shell == "bash":
        click.echo(BASH, nl=False)
        return
    from click.shell_completion import get_completion_class
    root = click.get_current_context().find_root().command      # the `git slicer` group
    click.echo(get_completion_class(shell)(root, {}, "git-slicer", COMPLETE_VAR).source())
