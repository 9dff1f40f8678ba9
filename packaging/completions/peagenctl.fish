# fish completion for peagenctl (fallback; replaced at build time by the
# output of `peagenctl completions fish` when the binary provides it).
complete -c peagenctl -l config -r -F -d 'configuration file'
complete -c peagenctl -l help -d 'show usage'
complete -c peagenctl -l version -d 'show version'
complete -c peagenctl -n __fish_use_subcommand -f -a config -d 'configuration commands'
complete -c peagenctl -n __fish_use_subcommand -f -a push -d 'add a task'
complete -c peagenctl -n __fish_use_subcommand -f -a task -d 'task commands'
complete -c peagenctl -n '__fish_seen_subcommand_from config' -f -a validate -d 'validate the configuration'
complete -c peagenctl -n '__fish_seen_subcommand_from task' -f -a get -d 'print the result of a task'
for b in peagen-worker peagen-spawnerd
    complete -c $b -l config -r -F -d 'configuration file'
    complete -c $b -l help -d 'show usage'
    complete -c $b -l version -d 'show version'
end
