-- lwr schema 7: who made a push and the subject of its commit message, for listings and
-- the web app's pushes page (NULL when the submitter did not say, as older clients do).
ALTER TABLE graphs ADD COLUMN author TEXT;
ALTER TABLE graphs ADD COLUMN subject TEXT;
