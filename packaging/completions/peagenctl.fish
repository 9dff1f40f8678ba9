# fish completion for peagenctl. Hand-written fallback; the package build
# installs the output of `peagenctl completions fish` instead when available.
set -l cmds push task queue workers config
complete -c peagenctl -f
complete -c peagenctl -s c -l config -r -F -d 'configuration file'
complete -c peagenctl -l json -d 'machine-readable JSON output'
complete -c peagenctl -s h -l help -d 'show usage'
complete -c peagenctl -s V -l version -d 'show version'
complete -c peagenctl -n "not __fish_seen_subcommand_from $cmds" -a push -d 'push a task'
complete -c peagenctl -n "not __fish_seen_subcommand_from $cmds" -a task -d 'task results'
complete -c peagenctl -n "not __fish_seen_subcommand_from $cmds" -a queue -d 'queue statistics and dead letters'
complete -c peagenctl -n "not __fish_seen_subcommand_from $cmds" -a workers -d 'list workers'
complete -c peagenctl -n "not __fish_seen_subcommand_from $cmds" -a config -d 'configuration'
complete -c peagenctl -n '__fish_seen_subcommand_from push' -s k -l kind -x -a 'echo execute' -d 'task kind'
complete -c peagenctl -n '__fish_seen_subcommand_from push' -s p -l payload -x -d 'payload JSON object'
complete -c peagenctl -n '__fish_seen_subcommand_from push' -l id -x -d 'task id'
complete -c peagenctl -n '__fish_seen_subcommand_from push' -l requires -x -d 'required capability'
complete -c peagenctl -n '__fish_seen_subcommand_from push' -l max-attempts -x
complete -c peagenctl -n '__fish_seen_subcommand_from push' -l timeout-ms -x
complete -c peagenctl -n '__fish_seen_subcommand_from push' -l deadline -x -d 'RFC 3339 time'
complete -c peagenctl -n '__fish_seen_subcommand_from push' -l trace-id -x -d 'W3C traceparent'
complete -c peagenctl -n '__fish_seen_subcommand_from push' -l file -r -F -d 'task documents (JSON lines)'
complete -c peagenctl -n '__fish_seen_subcommand_from push' -l count -x -d 'push N copies'
complete -c peagenctl -n '__fish_seen_subcommand_from task; and not __fish_seen_subcommand_from get' -a get -d 'print a result record'
complete -c peagenctl -n '__fish_seen_subcommand_from get' -l wait -x -d 'wait up to SECS'
complete -c peagenctl -n '__fish_seen_subcommand_from queue; and not __fish_seen_subcommand_from stats dlq' -a 'stats dlq'
complete -c peagenctl -n '__fish_seen_subcommand_from dlq; and not __fish_seen_subcommand_from list export retry' -a 'list export retry'
complete -c peagenctl -n '__fish_seen_subcommand_from list' -l limit -x
complete -c peagenctl -n '__fish_seen_subcommand_from retry' -l all -d 'retry every dead letter'
complete -c peagenctl -n '__fish_seen_subcommand_from config; and not __fish_seen_subcommand_from validate show' -a 'validate show'
