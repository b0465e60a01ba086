# Filled by the traps stage.
