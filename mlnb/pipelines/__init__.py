"""Running pipelines: a DAG of notebook stages, cached, resumable, delivering a model.

``locate`` finds specs (by name, in a project, the live deployment's copy);
``runner`` schedules the stages and tracks them; ``cache`` keys stages on
contents; ``events`` is what a run reports while it runs; ``delivery``
registers and gates the model a run delivers; ``signals`` holds interrupts
while a model is being registered.
"""
