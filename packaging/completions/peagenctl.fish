# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_peagenctl_global_optspecs
    string join \n c/config= json h/help V/version
end

function __fish_peagenctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_peagenctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_peagenctl_using_subcommand
    set -l cmd (__fish_peagenctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c peagenctl -n "__fish_peagenctl_needs_command" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_needs_command" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -s V -l version -d 'Print version'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "push" -d 'Push a task (from flags, or a whole task document with --file) and print its id'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "task" -d 'Task results'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "queue" -d 'Queue statistics and dead letters'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "workers" -d 'Workers of every host sharing the queue: host, state, pending, current task'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "fleet" -d 'Hosts sharing the queue: heartbeat age, workers by state, share, max'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "metrics" -d 'Queue and fleet metrics without systemd (Kubernetes, Compose)'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "autoscale" -d 'Size a worker pool with the spawner\'s policy: print the desired count or keep a Docker Compose service at it'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "config" -d 'Configuration'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "completions" -d 'Print a shell completion script, generated from the command-line definitions'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "man" -d 'Write the man pages of peagenctl, peagen-worker and peagen-spawnerd into DIR'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "budget" -d 'Workflow token budgets of LLM tasks'
complete -c peagenctl -n "__fish_peagenctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -s k -l kind -d 'Task kind (echo, execute, or a configured command kind)' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -s p -l payload -d 'Payload JSON object' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -l id -d 'Task id (default: generated)' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -l requires -d 'Capability the task requires (repeatable)' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -l max-attempts -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -l timeout-ms -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -l deadline -d 'RFC 3339 time after which the task must not start' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -l trace-id -d 'W3C traceparent' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -l file -d 'Read task documents (one JSON object per line) from FILE, or - for stdin' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -l count -d 'Push N copies, 1 to 1000000 (ids suffixed -1..-N when --id is given); sent in batches of 1000' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand push" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and not __fish_seen_subcommand_from get help" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and not __fish_seen_subcommand_from get help" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and not __fish_seen_subcommand_from get help" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and not __fish_seen_subcommand_from get help" -f -a "get" -d 'Print a task\'s result record (exit 1 if there is none yet)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and not __fish_seen_subcommand_from get help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and __fish_seen_subcommand_from get" -l wait -d 'Wait up to SECS for the result' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and __fish_seen_subcommand_from get" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and __fish_seen_subcommand_from get" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and __fish_seen_subcommand_from help" -f -a "get" -d 'Print a task\'s result record (exit 1 if there is none yet)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand task; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and not __fish_seen_subcommand_from stats dlq help" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and not __fish_seen_subcommand_from stats dlq help" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and not __fish_seen_subcommand_from stats dlq help" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and not __fish_seen_subcommand_from stats dlq help" -f -a "stats" -d 'Length, lag, pending, delayed retries, consumers, oldest age'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and not __fish_seen_subcommand_from stats dlq help" -f -a "dlq" -d 'Dead-letter stream'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and not __fish_seen_subcommand_from stats dlq help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from stats" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from stats" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from dlq" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from dlq" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from dlq" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from dlq" -f -a "list" -d 'List dead letters'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from dlq" -f -a "export" -d 'Write every dead letter as one JSON object per line to stdout'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from dlq" -f -a "retry" -d 'Put dead letters back on the queue with attempts reset'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from dlq" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Length, lag, pending, delayed retries, consumers, oldest age'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from help" -f -a "dlq" -d 'Dead-letter stream'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand queue; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand workers" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand workers" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand workers" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand fleet" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand fleet" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand fleet" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and not __fish_seen_subcommand_from serve help" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and not __fish_seen_subcommand_from serve help" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and not __fish_seen_subcommand_from serve help" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and not __fish_seen_subcommand_from serve help" -f -a "serve" -d 'Serve GET /metrics (queue work, fleet hosts and desired count, queue gauges) read from Redis every interval; runs until SIGTERM'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and not __fish_seen_subcommand_from serve help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and __fish_seen_subcommand_from serve" -l listen -d 'IP:PORT to serve GET /metrics on (default: metrics.spawner-listen)' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and __fish_seen_subcommand_from serve" -l interval-ms -d 'Milliseconds between reads of the queue and the fleet record' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and __fish_seen_subcommand_from serve" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and __fish_seen_subcommand_from serve" -l reclaim -d 'Also re-queue the tasks of gone workers (the orphan sweep of peagen-spawnerd, every spawner.reclaim-interval-secs): for pools without a spawner. Run it in one process per queue'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and __fish_seen_subcommand_from serve" -l worker-counters -d 'Also export the workers\' counters and histograms (peagen_tasks_total, ...), summed over every host\'s hash in Redis: for pools without peagen-spawnerd, which exports them per host otherwise'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and __fish_seen_subcommand_from serve" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and __fish_seen_subcommand_from serve" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and __fish_seen_subcommand_from help" -f -a "serve" -d 'Serve GET /metrics (queue work, fleet hosts and desired count, queue gauges) read from Redis every interval; runs until SIGTERM'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand metrics; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -l compose -d 'Keep this Docker Compose service at the desired count (runs until stopped)' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -l compose-file -d 'Compose file (docker compose -f FILE); default: Compose\'s own lookup' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -l project -d 'Compose project name (docker compose -p NAME)' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -l interval-ms -d 'Milliseconds between decisions' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -l print-desired -d 'Print the desired worker count for the live queue and exit'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -l watch -d 'With --print-desired: print it every interval instead of once'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -l reclaim -d 'With --compose: also re-queue the tasks of gone workers (the orphan sweep of peagen-spawnerd, every spawner.reclaim-interval-secs); Compose restarts no consumer that died with a task'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand autoscale" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and not __fish_seen_subcommand_from validate show help" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and not __fish_seen_subcommand_from validate show help" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and not __fish_seen_subcommand_from validate show help" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and not __fish_seen_subcommand_from validate show help" -f -a "validate" -d 'Check a config file; exit 0 if valid, 78 if not'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and not __fish_seen_subcommand_from validate show help" -f -a "show" -d 'Print the effective configuration (file + defaults + environment) as TOML'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and not __fish_seen_subcommand_from validate show help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and __fish_seen_subcommand_from validate" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and __fish_seen_subcommand_from validate" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and __fish_seen_subcommand_from validate" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and __fish_seen_subcommand_from show" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and __fish_seen_subcommand_from show" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "validate" -d 'Check a config file; exit 0 if valid, 78 if not'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "show" -d 'Print the effective configuration (file + defaults + environment) as TOML'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand completions" -l program -d 'Program to complete' -r -f -a "peagenctl\t''
peagen-worker\t''
peagen-spawnerd\t''"
complete -c peagenctl -n "__fish_peagenctl_using_subcommand completions" -l dir -d 'Write the scripts of all three programs into DIR instead' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand completions" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand completions" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand man" -l dir -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand man" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand man" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand man" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and not __fish_seen_subcommand_from set show help" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and not __fish_seen_subcommand_from set show help" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and not __fish_seen_subcommand_from set show help" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and not __fish_seen_subcommand_from set show help" -f -a "set" -d 'Set a workflow\'s token budget (used tokens are kept)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and not __fish_seen_subcommand_from set show help" -f -a "show" -d 'Show a workflow\'s budget: limit, used, reserved, started_at, deadline'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and not __fish_seen_subcommand_from set show help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from set" -l tokens -d 'Most tokens (prompt + completion) the workflow\'s LLM tasks may use' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from set" -l run-timeout-secs -d 'Tasks starting later than this after the workflow\'s first LLM task are skipped with reason run_timeout' -r
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from set" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from set" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from show" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from show" -l json -d 'Machine-readable JSON output'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from help" -f -a "set" -d 'Set a workflow\'s token budget (used tokens are kept)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show a workflow\'s budget: limit, used, reserved, started_at, deadline'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand budget; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "push" -d 'Push a task (from flags, or a whole task document with --file) and print its id'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "task" -d 'Task results'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "queue" -d 'Queue statistics and dead letters'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "workers" -d 'Workers of every host sharing the queue: host, state, pending, current task'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "fleet" -d 'Hosts sharing the queue: heartbeat age, workers by state, share, max'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "metrics" -d 'Queue and fleet metrics without systemd (Kubernetes, Compose)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "autoscale" -d 'Size a worker pool with the spawner\'s policy: print the desired count or keep a Docker Compose service at it'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "config" -d 'Configuration'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "completions" -d 'Print a shell completion script, generated from the command-line definitions'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "man" -d 'Write the man pages of peagenctl, peagen-worker and peagen-spawnerd into DIR'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "budget" -d 'Workflow token budgets of LLM tasks'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and not __fish_seen_subcommand_from push task queue workers fleet metrics autoscale config completions man budget help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and __fish_seen_subcommand_from task" -f -a "get" -d 'Print a task\'s result record (exit 1 if there is none yet)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and __fish_seen_subcommand_from queue" -f -a "stats" -d 'Length, lag, pending, delayed retries, consumers, oldest age'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and __fish_seen_subcommand_from queue" -f -a "dlq" -d 'Dead-letter stream'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and __fish_seen_subcommand_from metrics" -f -a "serve" -d 'Serve GET /metrics (queue work, fleet hosts and desired count, queue gauges) read from Redis every interval; runs until SIGTERM'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "validate" -d 'Check a config file; exit 0 if valid, 78 if not'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "show" -d 'Print the effective configuration (file + defaults + environment) as TOML'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and __fish_seen_subcommand_from budget" -f -a "set" -d 'Set a workflow\'s token budget (used tokens are kept)'
complete -c peagenctl -n "__fish_peagenctl_using_subcommand help; and __fish_seen_subcommand_from budget" -f -a "show" -d 'Show a workflow\'s budget: limit, used, reserved, started_at, deadline'
