DROP TABLE nars;
DROP TABLE narinfos;
