-- lwr schema 11: a node:register token acts for one node name, bound when the token is made
-- or at its first registration, with the properties placement pins on (hostname and tags)
-- the node claimed then (JSON); only an operator changes them afterwards (labels).
ALTER TABLE tokens ADD COLUMN node_name TEXT;
ALTER TABLE tokens ADD COLUMN node_claims TEXT;
