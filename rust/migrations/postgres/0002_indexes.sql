-- Due timers are read earliest first; executions are listed by status on start-up.

CREATE INDEX {prefix}timers_due ON {prefix}timers (due_ms);
CREATE INDEX {prefix}executions_status ON {prefix}executions (status);
