
# Prints the command path reached by the words before the cursor, then how many positional
# arguments that command has so far.
function __canidae_state
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l path canidae
    set -l npos 0
    set -l skip 0
    set -l dashdash 0
    for tok in $tokens
        if test $skip = 1
            set skip 0
        else if test $dashdash = 1
            set npos (math $npos + 1)
        else if test "$tok" = --
            set dashdash 1
        else if string match -q -- '-*' $tok
            if contains -- $tok (__canidae_valued $path)
                set skip 1
            end
        else if test $npos = 0; and contains -- $tok (__canidae_children $path)
            set path "$path $tok"
        else
            set npos (math $npos + 1)
        end
    end
    echo $path
    echo $npos
end

# True when the cursor is in the command at $argv[1] (and, given $argv[2], at positional index
# $argv[2]; with a trailing +, at that index or later).
function __canidae_at
    set -l state (__canidae_state)
    test "$state[1]" = "$argv[1]"; or return 1
    set -q argv[2]; or return 0
    set -l index (string trim -r -c + -- $argv[2])
    if string match -q -- '*+' $argv[2]
        test $state[2] -ge $index
    else
        test $state[2] -eq $index
    end
end

# Live names from the cluster for pack, node and zone arguments; nothing when it cannot be asked.
function __canidae_names
    set -l noun node
    set -l keys 'id|name'
    switch $argv[1]
        case pack
            set noun pack
            set keys name
        case zone
            set keys zone
    end
    set -l prog (commandline -opc)[1]
    $prog $noun list --json --stale 2>/dev/null </dev/null \
        | string match -ar -- '"(?:'$keys')" *: *"[^"]*"' \
        | string replace -r -- '.*"([^"]*)"$' '$1' | sort -u
end

complete -c canidae -f
