# bash completion for podunit(1)
# shellcheck shell=bash
#
# Commands, options and arguments are read from podunit's own argument parser (once per
# shell), so they are never out of date; pod, container and image names come from podunit
# ("list --json", "status --json", "images --json"; like podunit, they need root).

# The interpreter podunit runs with (its #! line), which can import podunit.
_podunit_python()
{
    local podunit line
    podunit=$(type -P podunit) || return 1
    IFS= read -r line <"$podunit" || return 1
    if [[ $line == '#!'*python* ]]; then
        line=${line#'#!'}
        echo "${line%% *}"
    else
        echo /usr/bin/python3
    fi
}

# One line per command: "PATH|SUBCOMMANDS|OPTIONS|OPTIONS TAKING A VALUE|POSITIONALS", where
# PATH is "" for podunit itself, "run", "image prune"... and a positional is its argparse
# dest, with "..." when it takes several words. Loaded into the _podunit_* arrays.
_podunit_load_spec()
{
    [[ -n ${_podunit_spec_loaded:-} ]] && return 0
    local python spec line path
    python=$(_podunit_python) || return 1
    spec=$("$python" -c '
import argparse

from podunit.cli import make_parser


def walk(parser, path):
    subs, options, value_options, positionals = [], [], [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                subs.append(name)
                walk(sub, [*path, name])
        elif action.option_strings:
            options += action.option_strings
            if action.nargs != 0:
                value_options += action.option_strings
        else:
            many = action.nargs in ("+", "*", argparse.REMAINDER)
            positionals.append(action.dest + ("..." if many else ""))
    fields = (path, subs, options, value_options, positionals)
    print("|".join(" ".join(field) for field in fields))


walk(make_parser(), [])
' 2>/dev/null) || return 1
    declare -gA _podunit_subs=() _podunit_options=() _podunit_value_options=() _podunit_args=()
    # Keys are ".PATH": bash refuses an empty key.
    while IFS='|' read -r path line; do
        IFS='|' read -r "_podunit_subs[.$path]" "_podunit_options[.$path]" \
            "_podunit_value_options[.$path]" "_podunit_args[.$path]" <<<"$line"
    done <<<"$spec"
    _podunit_spec_loaded=1
}

_podunit_json_names()
{
    # $1: podunit arguments printing JSON; $2: Python expression listing names from "data".
    local python
    python=$(_podunit_python) || return 0
    # shellcheck disable=SC2086 # $1 is a list of words
    podunit $1 2>/dev/null | "$python" -c '
import json, sys
try:
    data = json.load(sys.stdin)
    for name in '"$2"':
        print(name)
except (ValueError, KeyError, TypeError, AttributeError):
    pass
' 2>/dev/null
}

_podunit_reply()
{
    # $1: newline-separated words; those that start with $cur.
    local IFS=$'\n'
    mapfile -t COMPREPLY < <(compgen -W "$1" -- "$cur")
}

_podunit_words()
{
    # $1: space-separated words; those that start with $cur.
    _podunit_reply "${1// /$'\n'}"
}

_podunit()
{
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion || return
    else
        # Without the bash-completion package: the same variables, from bash's own.
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD - 1]:-}
    fi
    _podunit_load_spec || return 0

    # Walk the words before the cursor: (sub)commands, options with their values, arguments.
    local path="" word i dashdash=""
    local -a args=()
    for ((i = 1; i < cword; i++)); do
        word=${words[i]}
        if [[ -n $dashdash ]]; then
            args+=("$word")
        elif [[ $word == -- ]]; then
            dashdash=1
        elif [[ $word == -* ]]; then
            if [[ $word != *=* && " ${_podunit_value_options[.$path]} " == *" $word "* ]]; then
                ((i += 1))
            fi
        elif ((${#args[@]} == 0)) && [[ " ${_podunit_subs[.$path]} " == *" $word "* ]]; then
            path=${path:+$path }$word
        else
            args+=("$word")
        fi
    done

    # The value of an option (a name, a number of seconds): nothing to offer.
    if [[ -z $dashdash && " ${_podunit_value_options[.$path]} " == *" $prev "* ]]; then
        return 0
    fi
    if [[ -z $dashdash && $cur == -* ]]; then
        _podunit_words "${_podunit_options[.$path]}"
        return 0
    fi
    if [[ -n ${_podunit_subs[.$path]} ]]; then
        ((${#args[@]} == 0)) && _podunit_words "${_podunit_subs[.$path]}"
        return 0
    fi

    # Which positional argument the cursor is on.
    local -a positionals
    read -r -a positionals <<<"${_podunit_args[.$path]}"
    local n=${#args[@]} argument=""
    if ((n < ${#positionals[@]})); then
        argument=${positionals[n]}
    elif ((${#positionals[@]} > 0)) && [[ ${positionals[-1]} == *... ]]; then
        argument=${positionals[-1]}
    fi

    case ${argument%...} in
        pod)
            _podunit_reply "$(_podunit_json_names "list --json" '(pod["name"] for pod in data)')"
            ;;
        app)
            local apps='(app["name"] for app in data.get("init_apps", []) + data.get("apps", []))'
            _podunit_reply "$(_podunit_json_names "status --json ${args[0]}" "$apps")"
            ;;
        ref)
            _podunit_reply "$(_podunit_json_names "images --json" '(image["ref"] for image in data)')"
            ;;
        file | files)
            if declare -F _filedir >/dev/null; then
                _filedir
            else
                compopt -o filenames 2>/dev/null
                mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            fi
            ;;
        cmd)
            # "podunit exec POD APP -- CMD": the command runs inside the container, whose
            # programs are not the host's to complete.
            [[ -z $dashdash ]] && _podunit_words "--"
            ;;
    esac
    return 0
}

complete -F _podunit podunit
