# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_peagen_worker_global_optspecs
    string join \n c/config= h/help V/version
end

function __fish_peagen_worker_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_peagen_worker_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_peagen_worker_using_subcommand
    set -l cmd (__fish_peagen_worker_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -s h -l help -d 'Print help'
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -s V -l version -d 'Print version'
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -f -a "run" -d 'Run the consume loop (the default)'
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -f -a "sandbox-run" -d 'Run a command in the execute sandbox and print its verdict (debugging)'
complete -c peagen-worker -n "__fish_peagen_worker_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand run" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand run" -s h -l help -d 'Print help'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l memory -d 'Memory limit in bytes' -r
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l pids -d 'Maximum number of processes' -r
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l wall-ms -d 'Wall clock limit in milliseconds' -r
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l cpu-ms -d 'CPU time limit in milliseconds' -r
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l output-bytes -d 'Cap on captured stdout and on stderr, in bytes each' -r
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l file-size -d 'Largest file the command may write, in bytes' -r
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l tmpfs -d 'Size of the /work tmpfs in bytes' -r
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l ro-bind -d 'Bind a host path read-only at the same path (added to the defaults)' -r -F
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l env -d 'Set an environment variable (the environment starts empty)' -r
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l stdin -d 'Feed FILE (or `-`, this process\'s stdin) to the command\'s stdin' -r -F
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -s c -l config -d 'Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults)' -r -F
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -l json -d 'Print the verdict as one JSON object'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand sandbox-run" -s h -l help -d 'Print help'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand help; and not __fish_seen_subcommand_from run sandbox-run help" -f -a "run" -d 'Run the consume loop (the default)'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand help; and not __fish_seen_subcommand_from run sandbox-run help" -f -a "sandbox-run" -d 'Run a command in the execute sandbox and print its verdict (debugging)'
complete -c peagen-worker -n "__fish_peagen_worker_using_subcommand help; and not __fish_seen_subcommand_from run sandbox-run help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
