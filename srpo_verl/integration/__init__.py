"""Thin verl glue: registrations, the SRPO trainer step, the loss hook and the EMA teacher."""
