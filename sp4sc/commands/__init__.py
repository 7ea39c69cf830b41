"""Commands: one module per ``sp4sc`` sub-command (arguments, output, exit codes), plus the
help texts (:mod:`.helptext`) and the help cache of the Lightning commands (:mod:`.helpcache`).

May import every package below it. Only ``sp4sc.cli`` imports commands.
"""
