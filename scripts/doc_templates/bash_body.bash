
# Live names from the cluster for pack, node and zone arguments; nothing (and no noise) when the
# cluster cannot be asked. Global options typed before the noun (--addr ...) are passed along.
_canidae_names() {
    local noun=node keys='id|name'
    case "$1" in
        pack) noun=pack keys='name' ;;
        zone) keys='zone' ;;
    esac
    local -a run=("${COMP_WORDS[0]}" "${_canidae_globals[@]}" "$noun" list --json --stale)
    if command -v timeout >/dev/null 2>&1; then
        run=(timeout 5 "${run[@]}")
    fi
    "${run[@]}" 2>/dev/null </dev/null \
        | grep -oE "\"($keys)\" *: *\"[^\"]*\"" 2>/dev/null \
        | sed -E 's/.*"([^"]*)"$/\1/' 2>/dev/null \
        | sort -u 2>/dev/null
    return 0
}

_canidae_complete_value() {
    local kind="$1" cur="$2"
    case "$kind" in
        choice:*) COMPREPLY=($(compgen -W "${kind#choice:}" -- "$cur")) ;;
        file)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -- "$cur"))
            ;;
        pack|node|zone) COMPREPLY=($(compgen -W "$(_canidae_names "$kind")" -- "$cur")) ;;
        *) COMPREPLY=() ;;
    esac
}

_canidae() {
    local cur="${COMP_WORDS[COMP_CWORD]}" path="canidae" word kind children
    local i=1 npos=0 dashdash=0
    local -a _canidae_globals=()
    COMPREPLY=()
    # Walk the words before the cursor: descend into subcommands, skip option values, count
    # positional arguments of the command reached.
    while [ "$i" -lt "$COMP_CWORD" ]; do
        word="${COMP_WORDS[i]}"
        if [ "$dashdash" = 1 ]; then
            npos=$((npos + 1))
        elif [ "$word" = "--" ]; then
            dashdash=1
        elif [[ "$word" == -* ]]; then
            if [[ "$word" != *=* ]] && kind="$(_canidae_option_value "$path" "$word")"; then
                if [ "$path" = "canidae" ]; then
                    _canidae_globals+=("$word" "${COMP_WORDS[i + 1]}")
                fi
                i=$((i + 1))
            fi
        elif [ "$npos" = 0 ] && [[ " $(_canidae_children "$path") " == *" $word "* ]]; then
            path="$path $word"
        else
            npos=$((npos + 1))
        fi
        i=$((i + 1))
    done
    if [ "$dashdash" = 1 ]; then
        # After '--' comes a member command: let bash complete it like any command line.
        compopt -o default 2>/dev/null
        return 0
    fi
    if [ "$i" -gt "$COMP_CWORD" ]; then
        # The cursor is on the value of the option before it.
        word="${COMP_WORDS[COMP_CWORD - 1]}"
        _canidae_complete_value "$(_canidae_option_value "$path" "$word")" "$cur"
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$(_canidae_options "$path")" -- "$cur"))
        return 0
    fi
    children="$(_canidae_children "$path")"
    if [ -n "$children" ]; then
        COMPREPLY=($(compgen -W "$children" -- "$cur"))
        return 0
    fi
    if kind="$(_canidae_argument "$path" "$npos")"; then
        _canidae_complete_value "$kind" "$cur"
    fi
    return 0
}

complete -F _canidae canidae
