DROP INDEX outcomes_by_group;
