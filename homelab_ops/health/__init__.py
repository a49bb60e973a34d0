"""Health checks, the state machine that turns their results into alerts, and their remedies.

`checks` judges plain readings, `machine` remembers states across sensor ticks,
`remedies` says which job a failing check starts, `evaluate` reads the world.
"""
