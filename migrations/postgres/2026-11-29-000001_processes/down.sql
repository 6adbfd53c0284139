DROP TABLE outcomes;
DROP TABLE failure_groups;
DROP TABLE items;
DROP TABLE steps;
DROP TABLE processes;
